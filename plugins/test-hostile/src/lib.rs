//! Test-only hostile guest. Each value of the `behaviour` parameter breaks
//! a different rule; the host's tests show that each fails its own run with
//! a clear error while the host goes on serving the next one.

use std::hint::black_box;

use schoolbell_plugin_sdk::notifier::*;

struct Plugin;

impl PluginGuest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "test-hostile".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Notifier,
            description: "Misbehaves on purpose (tests only).".into(),
            params: vec![
                param_spec(
                    "behaviour",
                    ValueType::Text,
                    None,
                    "loop, sleep, memory, recursion, leftover, panic, huge-output, undeclared, ambient, well, flood, big-body, state-keys, state-value, refusals, chatter, other-rule or address",
                ),
                param_spec(
                    "times",
                    ValueType::Integer,
                    Some(Value::Integer(1)),
                    "how many times to misbehave, where it counts",
                ),
            ],
            capabilities: vec![Capability::ReadCollection("attendance".into())],
        }
    }
}

fn recurse(depth: u64) -> u64 {
    // black_box keeps the optimiser from turning this into a loop, and the
    // unreachable base case keeps rustc's recursion lint quiet.
    if black_box(depth) == u64::MAX {
        return 0;
    }
    depth + recurse(black_box(depth + 1))
}

impl NotifierGuest for Plugin {
    fn run(params: Vec<Param>) -> Result<Vec<Notification>, PluginError> {
        let note = |subject: String| Notification {
            recipient: Recipient::NotificationGroup,
            subject,
            body: String::new(),
            dedupe_key: String::new(),
        };
        let times = match params.iter().find(|p| p.name == "times").map(|p| &p.value) {
            Some(Value::Integer(n)) => (*n).max(0) as u64,
            _ => 1,
        };
        match text_param(&params, "behaviour")?.as_str() {
            "loop" => {
                // Says it has started, so a test can cancel it mid-loop
                // rather than after a guessed delay.
                host::progress(1, None);
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "sleep" => {
                // Waits in WASI (`pollable.block`), where no wasm runs for
                // the epoch to interrupt.
                host::progress(1, None);
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(vec![note("woke up".into())])
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recursion" => Ok(vec![note(recurse(0).to_string())]),
            "leftover" => {
                // Looks for what an earlier run left in memory, then leaves
                // its own: a fresh heap (not zeroed by the allocator) that
                // holds the marker was not reset between runs.
                const MARK: &[u8] = b"LEFTOVER-STUDENT-RECORD";
                let layout = std::alloc::Layout::from_size_align(4 << 20, 8).expect("a layout");
                // SAFETY: a fresh allocation of that layout, read as bytes
                // and freed with it; a wasm page holds no trap values.
                let found = unsafe {
                    let heap = std::alloc::alloc(layout);
                    let bytes = std::slice::from_raw_parts_mut(heap, layout.size());
                    let found = bytes.windows(MARK.len()).filter(|w| *w == MARK).count();
                    for chunk in bytes.chunks_mut(MARK.len()) {
                        chunk.copy_from_slice(&MARK[..chunk.len()]);
                    }
                    black_box(&bytes);
                    std::alloc::dealloc(heap, layout);
                    found
                };
                Ok(vec![note(format!("found {found}"))])
            }
            "panic" => panic!("test-hostile panicked on purpose"),
            "huge-output" => {
                let line = "x".repeat(1023);
                for _ in 0..8192 {
                    println!("{line}");
                }
                for i in 0..20_000 {
                    log(Level::Info, &format!("log line {i}"));
                }
                Ok((0..150_000).map(|i| note(format!("n{i}"))).collect())
            }
            "undeclared" => {
                let page = host::read_records("staff", None, 10)?;
                Ok(vec![note(format!("read {} staff records", page.records.len()))])
            }
            "ambient" => {
                // Reports what the sandbox let it see: nothing, if it holds.
                let files = std::fs::read_dir("/").map(|d| d.count()).unwrap_or(0);
                let env = std::env::vars().count();
                let args = std::env::args().count();
                let net = std::net::TcpStream::connect("127.0.0.1:22").is_ok();
                Ok(vec![note(format!("files={files} env={env} args={args} net={net}"))])
            }
            "well" => Ok(vec![note("behaved".into())]),
            // What a vendor's broken plugin does to a host: each must fail
            // its own run, or succeed within bounds, with the host's
            // memory flat.
            "flood" => Ok((0..5_000_000).map(|_| note(String::new())).collect()),
            "big-body" => {
                let mut n = note("big".into());
                n.body = "x".repeat(50_000_000);
                Ok(vec![n])
            }
            "state-keys" => {
                for i in 0..1_000_000u32 {
                    host::state_set(&format!("k{i}"), Some("1"));
                }
                Ok(vec![note("wrote a million keys".into())])
            }
            "state-value" => {
                let value = "v".repeat(512 * 1024);
                for _ in 0..1_200 {
                    host::state_set("big", Some(&value));
                }
                Ok(vec![note("rewrote one value".into())])
            }
            "refusals" => {
                for _ in 0..times {
                    let _ = host::count_records("staff");
                }
                Ok(vec![note("asked ten million times".into())])
            }
            "address" => Ok(vec![Notification {
                recipient: Recipient::Address("someone@elsewhere.example".into()),
                subject: "to an address it chose".into(),
                body: String::new(),
                dedupe_key: "address".into(),
            }]),
            "other-rule" => {
                let d = host::eval_rule("attendance_threshold", &[])?;
                Ok(vec![note(format!("the rule said {}", d.matched))])
            }
            "chatter" => {
                for i in 0..1_000_000u32 {
                    log(Level::Info, &format!("log line {i}"));
                }
                Ok(vec![note("talked".into())])
            }
            other => Err(PluginError::BadInput(format!("unknown behaviour `{other}`"))),
        }
    }
}

export_notifier!(Plugin);
