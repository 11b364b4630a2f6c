//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points the
//! fuzz targets call, so every input that ever found a bug, and the corpus the fuzzer
//! built, keeps passing without nightly or cargo-fuzz.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read corpus file");
            run(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "the {target} corpus is empty");
}

#[test]
fn native_message_corpus_replays() {
    replay("native_message", nilecast::fuzzing::native_message);
}

#[test]
fn ws_frame_corpus_replays() {
    replay("ws_frame", nilecast::fuzzing::ws_frames);
}

#[test]
fn socketio_packet_corpus_replays() {
    replay("socketio_packet", nilecast::fuzzing::socketio_packet);
}
