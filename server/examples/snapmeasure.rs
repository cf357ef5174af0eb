use fenced_server::state::*;
use std::time::Instant;
fn main() {
    let mut s = StateMachine::new();
    for _ in 0..10_000 {
        s.execute(&Command::LeaseGrant { id: 0, ttl: 60 });
    }
    for i in 0..100_000i64 {
        s.execute(&Command::Put(PutRequest {
            key: format!("key/{i:08}").into_bytes(),
            value: vec![b'x'; 100],
            lease: if i % 10 == 0 {
                1 + (i / 10) % 10_000
            } else {
                0
            },
            prev_kv: false,
        }));
    }
    for _ in 0..3 {
        let t = Instant::now();
        let c = s.clone();
        let clone = t.elapsed();
        let t = Instant::now();
        let b = snapshot::encode(&c);
        let enc = t.elapsed();
        let t = Instant::now();
        let d = snapshot::decode(&b).unwrap();
        let dec = t.elapsed();
        println!(
            "clone {clone:?} encode {enc:?} ({} bytes) decode {dec:?} eq {}",
            b.len(),
            d == s
        );
    }
}
