//! The writer's drain-and-write of one batch, and why it batches: N queued 150-byte
//! frames (N = 1, 16, 64, 256; 256 is the writer's `MAX_BATCH`) are drained from an
//! `Outbox` with `drain_into` and written to a loopback TCP socket either with ONE
//! `write_vectored` call (`writev`, what `ws/writer.rs` does) or with one `write` call
//! per frame.
//!
//! The socket is a std `TcpListener`/`TcpStream` pair on 127.0.0.1:0 with `TCP_NODELAY`
//! on the writing side (as the server sets it) and 4 MiB socket buffers; a reader thread
//! reads and discards everything, so the writes never wait for the reader and the time
//! is the syscalls' and the loopback stack's. The frames are queued before each
//! iteration, outside the timed part (`iter_custom`).
//!
//! The bench uses mimalloc, the server's allocator.
//!
//! Run: `cargo bench --bench writer`.

use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nilecast::config::SlowConsumerPolicy;
use nilecast::fanout::outbox::{Outbox, Outgoing};

/// The server's allocator (`src/main.rs`), so allocation costs are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const FRAME_BYTES: usize = 150;
/// The writer's `MAX_BATCH`.
const MAX_BATCH: usize = 256;
const SOCKET_BUFFER: usize = 4 << 20;

/// A connected loopback pair: the stream we write to, and the thread that drains the
/// other end (returns how many bytes it read).
fn loopback() -> (TcpStream, JoinHandle<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let client = TcpStream::connect(addr).expect("connect loopback");
    let (server, _) = listener.accept().expect("accept loopback");
    server.set_nodelay(true).expect("nodelay");
    socket2::SockRef::from(&server)
        .set_send_buffer_size(SOCKET_BUFFER)
        .expect("send buffer");
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(SOCKET_BUFFER)
        .expect("recv buffer");
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    (server, reader)
}

/// Writes every frame with as few `writev` calls as the kernel allows (one, unless it
/// takes only part of the batch).
fn write_vectored_all(stream: &mut TcpStream, batch: &[Outgoing]) {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|o| IoSlice::new(&o.frame)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = stream.write_vectored(slices).expect("loopback write");
        assert!(n > 0, "loopback closed");
        IoSlice::advance_slices(&mut slices, n);
    }
}

fn write_per_frame(stream: &mut TcpStream, batch: &[Outgoing]) {
    for o in batch {
        stream.write_all(&o.frame).expect("loopback write");
    }
}

type Strategy = fn(&mut TcpStream, &[Outgoing]);

fn drain_and_write(c: &mut Criterion) {
    let (mut stream, reader) = loopback();
    let outbox = Outbox::new(1024, SlowConsumerPolicy::Disconnect);
    let frame = Bytes::from(vec![b'x'; FRAME_BYTES]);
    let mut written = 0u64;

    let mut group = c.benchmark_group("drain_and_write_150B_frames");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for n in [1usize, 16, 64, 256] {
        group.throughput(Throughput::Elements(n as u64));
        let strategies: [(&str, Strategy); 2] = [
            ("writev_one_call", write_vectored_all),
            ("write_per_frame", write_per_frame),
        ];
        for (name, strategy) in strategies {
            // Setup: `n` 150-byte frames queued on one outbox (not timed); time
            // `drain_into` of the batch plus its write to the loopback socket, with one
            // `write_vectored` call or with one `write` per frame.
            group.bench_function(BenchmarkId::new(name, n), |b| {
                let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
                b.iter_custom(|iterations| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iterations {
                        for _ in 0..n {
                            outbox.send(frame.clone());
                        }
                        let started = Instant::now();
                        outbox.drain_into(&mut batch, MAX_BATCH, usize::MAX);
                        strategy(&mut stream, &batch);
                        batch.clear();
                        spent += started.elapsed();
                        written += (n * FRAME_BYTES) as u64;
                    }
                    spent
                });
            });
        }
    }
    group.finish();

    stream.shutdown(Shutdown::Write).expect("shutdown");
    let read = reader.join().expect("reader thread");
    assert_eq!(read, written, "the reader saw every byte written");
}

criterion_group!(benches, drain_and_write);
criterion_main!(benches);
