//! The fuzz targets on the stable toolchain: replays the seed corpus in
//! `fuzz/corpus/TARGET/`, then mutates it (bit flips, cuts, insertions, splices) for
//! `FUZZ_SECONDS` per target (default 1; CI sets 60). Any panic is a finding; the
//! failing input is written to `target/fuzz-findings/` and printed in hex.
//!
//! This is a mutation loop without coverage feedback: it finds shallow bugs quickly
//! and guards the corpus, but it is no substitute for `cargo fuzz run` with
//! libFuzzer's coverage guidance (see `fuzz/README.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blindrelay_protocol::fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map(|dir| {
            dir.filter_map(|entry| std::fs::read(entry.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    seeds.push(Vec::new());
    seeds
}

/// xorshift64*: reproducible from the seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 => {
                let cut = rng.below(input.len() + 1);
                input.truncate(cut);
            }
            3 => {
                let at = rng.below(input.len() + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    input.insert(at, rng.next() as u8);
                }
            }
            4 if !other.is_empty() => {
                let at = rng.below(input.len() + 1);
                let from = rng.below(other.len());
                let to = from + rng.below(other.len() - from + 1);
                input.splice(at..at, other[from..to].iter().copied());
            }
            5 if !input.is_empty() => {
                // Interesting integers at a random place: lengths and counts.
                let i = rng.below(input.len());
                input[i] = [0, 1, 0x7f, 0x80, 0xff, 0x20, 0x40][rng.below(7)];
            }
            _ => {
                let at = rng.below(input.len() + 1);
                input.insert(at, rng.next() as u8);
            }
        }
        input.truncate(4096);
    }
}

fn run_target(name: &str, body: fn(&[u8])) {
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0f64);
    let seeds = seeds(name);
    for seed in &seeds {
        check(name, body, seed);
    }
    let start_seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    eprintln!("{name}: {} seeds, FUZZ_SEED={start_seed}", seeds.len());
    let mut rng = Rng(start_seed);
    let deadline = Instant::now() + Duration::from_secs_f64(budget);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        mutate(&mut rng, &mut input, other);
        check(name, body, &input);
        runs += 1;
    }
    eprintln!("{name}: {runs} mutated inputs, no finding");
}

fn check(name: &str, body: fn(&[u8]), input: &[u8]) {
    let result = std::panic::catch_unwind(|| body(input));
    if result.is_err() {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-findings");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(
            dir.join(format!("{name}-{}", &hex[..hex.len().min(16)])),
            input,
        );
        panic!("fuzz target {name} failed on input {hex}");
    }
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in TARGETS {
        let count = std::fs::read_dir(corpus_dir(name))
            .map(|dir| dir.count())
            .unwrap_or(0);
        assert!(count > 0, "fuzz/corpus/{name} is empty");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../fuzz/fuzz_targets/{name}.rs"))
                .exists(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
    }
}

macro_rules! fuzz_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (name, body) = TARGETS
                    .iter()
                    .find(|(name, _)| *name == stringify!($name))
                    .expect("listed in TARGETS");
                run_target(name, *body);
            }
        )*
        #[test]
        fn every_target_is_run_here() {
            let here = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(here.contains(name), "{name} is not run by this test file");
            }
        }
    };
}

fuzz_tests!(
    control,
    control_stream,
    ticket,
    ticket_text,
    host_id_text,
    noise_handshake,
    noise_frames,
    token,
    token_text,
    key_files,
    registration,
    stream_frames,
    punch,
);
