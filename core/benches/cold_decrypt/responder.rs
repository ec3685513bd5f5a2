//! A homeserver stand-in on loopback for the catch-up measurement: answers the event fetch
//! and the to-device `/sync` of the notification being measured with canned bodies, so
//! that the figure is Newt's work plus loopback HTTP, not a server's.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// What the next child is answered: the event and the `/sync` carrying its room key.
#[derive(Default)]
struct Answers {
    event: String,
    sync: String,
}

/// The running stand-in (its thread lives as long as the benchmark).
pub(crate) struct Responder {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    answers: Arc<Mutex<Answers>>,
}

impl Responder {
    pub(crate) fn start() -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answers = Arc::new(Mutex::new(Answers::default()));
        let shared = Arc::clone(&answers);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                answer(stream, &shared);
            }
        });
        Responder { url, answers }
    }

    /// The next notification is about `event`; the catch-up `/sync` (position `n`) brings
    /// `to_device`.
    pub(crate) fn serve(&self, event: &Value, to_device: Option<&Value>, n: usize) {
        let events: Vec<&Value> = to_device.into_iter().collect();
        let sync = json!({"next_batch": format!("s{n}"), "to_device": {"events": events}});
        *self.answers.lock().unwrap() = Answers {
            event: event.to_string(),
            sync: sync.to_string(),
        };
    }
}

/// One request per connection: the path decides the body.
fn answer(stream: TcpStream, answers: &Mutex<Answers>) {
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let body = {
        let answers = answers.lock().unwrap();
        if request_line.contains("/sync") {
            answers.sync.clone()
        } else {
            answers.event.clone()
        }
    };
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}
