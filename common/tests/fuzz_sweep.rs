//! Property-based fuzzing of the sweep parser: arbitrary text, mutations of
//! the example sweeps, and sweeps generated from the file's grammar with
//! absurd values. The parser must never panic; a rejection names the file
//! (and a line where it can); an accepted sweep expands to at most the job
//! cap, each configuration once per fold, with trainer settings in range.
//!
//! Every case is also bounded in time and memory: a parse may take at most
//! `MAX_CASE_TIME` and allocate at most `MAX_CASE_BYTES` more than it had
//! when it began (measured per thread by the counting allocator below).
//!
//! `SWEEPFOLD_FUZZ_CASES` sets the number of cases per property (default
//! 256; the run recorded in BENCHMARKS.md used more).

// The one exception to the workspace's `unsafe_code = "deny"`: a test-only
// counting allocator (below), which must implement the unsafe `GlobalAlloc`.
#![allow(unsafe_code)]

use proptest::prelude::*;
use proptest::test_runner::Config;
use sweepfold_common::sweep::{Limits, parse_sweep};

const FILE: &str = "fuzz.yaml";

/// The longest one case may take (a debug build on a loaded 2-core CI VM).
const MAX_CASE_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The most memory one case may hold at its peak.
const MAX_CASE_BYTES: usize = 256 << 20;

/// The system allocator, counting the bytes each thread holds and their
/// peak, so a case's memory can be bounded while other tests run.
struct Counting;

thread_local! {
    static HELD: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the counters are
// thread-local cells without destructors, so they allocate nothing.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = HELD.try_with(|h| {
            h.set(h.get() + layout.size() as isize);
            let _ = PEAK.try_with(|p| p.set(p.get().max(h.get())));
        });
        // SAFETY: the caller's layout goes to the system allocator as is.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        let _ = HELD.try_with(|h| h.set(h.get() - layout.size() as isize));
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, failing if it took longer than [`MAX_CASE_TIME`] or held more
/// than [`MAX_CASE_BYTES`] beyond what the thread held before.
fn bounded<T>(src: &str, f: impl FnOnce() -> T) -> T {
    let held = HELD.with(|h| h.get());
    PEAK.with(|p| p.set(held));
    let start = std::time::Instant::now();
    let out = f();
    let took = start.elapsed();
    let peak = (PEAK.with(|p| p.get()) - held).max(0) as usize;
    let head: String = src.chars().take(200).collect();
    assert!(took <= MAX_CASE_TIME, "a case took {took:?}: {head:?}");
    assert!(
        peak <= MAX_CASE_BYTES,
        "a case held {} MiB: {head:?}",
        peak >> 20
    );
    out
}

const EXAMPLES: &[&str] = &[
    include_str!("../../examples/sweeps/demo.yaml"),
    include_str!("../../examples/sweeps/logreg-command.yaml"),
    include_str!("../../examples/sweeps/resnet-lr-ls.yaml"),
    include_str!("../../examples/sweeps/tpe-asha.yaml"),
];

fn cases() -> u32 {
    std::env::var("SWEEPFOLD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Parses with a small cap (so huge grids are exercised) and checks what
/// holds for every input.
fn check(src: &str) {
    let limits = Limits { max_jobs: 500 };
    match bounded(src, || parse_sweep(src, FILE, limits)) {
        Ok(sweep) => {
            assert!(sweep.folds() >= 2, "folds {}", sweep.folds());
            assert!(
                sweep.num_jobs() <= limits.max_jobs,
                "{} jobs over the cap",
                sweep.num_jobs()
            );
            if sweep.file.method.incremental() {
                // A tpe sweep's configurations are proposed while it runs.
                assert!(sweep.configurations.is_empty());
                let planned = sweep.planned_configurations();
                assert!(planned >= 1);
                assert!(
                    planned * u64::from(sweep.folds()) <= limits.max_jobs,
                    "{planned} configurations over the cap"
                );
            } else {
                assert!(!sweep.configurations.is_empty());
            }
            for (i, c) in sweep.configurations.iter().enumerate() {
                assert_eq!(c.index as usize, i, "configurations numbered in order");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with(FILE),
                "an error that does not name the file: {msg}"
            );
            assert!(!e.problems.is_empty(), "an error without a problem");
            for p in &e.problems {
                assert!(!p.message.is_empty(), "a problem without a message: {msg}");
            }
        }
    }
}

/// Values that break naive parsers and arithmetic.
fn nasty_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("-3".to_string()),
        Just("0".to_string()),
        Just("-0.0".to_string()),
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        Just(".nan".to_string()),
        Just(".inf".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("4294967296".to_string()),
        Just("-9223372036854775808".to_string()),
        Just("~".to_string()),
        Just("null".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, [2, [3]]]".to_string()),
        Just("{values: []}".to_string()),
        Just("{value: {value: 1}}".to_string()),
        Just("!!binary aGVsbG8=".to_string()),
        Just("&a [*a]".to_string()),
        Just("yes".to_string()),
        Just("10TiB".to_string()),
        Just("-1GiB".to_string()),
        Just("\"\\u0000\"".to_string()),
        "[a-z_]{1,10}",
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    ReplaceValue(usize, String),
    InsertKey(usize, String, String),
    Truncate(usize),
    Indent(usize, usize),
    Unindent(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<usize>().prop_map(Mutation::DeleteLine),
        1 => any::<usize>().prop_map(Mutation::DuplicateLine),
        4 => (any::<usize>(), nasty_scalar()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        2 => (any::<usize>(), prop_oneof![
                Just("learning_rate".to_string()),
                Just("method".to_string()),
                Just("kfold".to_string()),
                Just("folds".to_string()),
                Just("count".to_string()),
                Just("distribution".to_string()),
                "[a-z_]{1,12}",
            ], nasty_scalar())
            .prop_map(|(i, k, v)| Mutation::InsertKey(i, k, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), 1usize..5).prop_map(|(i, n)| Mutation::Indent(i, n)),
        1 => any::<usize>().prop_map(Mutation::Unindent),
    ]
}

fn apply(src: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = src.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return String::new();
    }
    let n = lines.len();
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::ReplaceValue(i, v) => {
            let l = &mut lines[i % n];
            if let Some(colon) = l.find(": ") {
                l.truncate(colon + 2);
                l.push_str(v);
            } else if let Some(dash) = l.find("- ") {
                l.truncate(dash + 2);
                l.push_str(v);
            }
        }
        Mutation::InsertKey(i, k, v) => {
            let at = i % n;
            let indent: String = lines[at].chars().take_while(|c| *c == ' ').collect();
            lines.insert(at, format!("{indent}{k}: {v}"));
        }
        Mutation::Truncate(i) => {
            let joined = lines.join("\n");
            let mut cut = i % (joined.len() + 1);
            while !joined.is_char_boundary(cut) {
                cut -= 1;
            }
            return joined[..cut].to_string();
        }
        Mutation::Indent(i, k) => {
            let l = &mut lines[i % n];
            l.insert_str(0, &" ".repeat(*k));
        }
        Mutation::Unindent(i) => {
            let l = &mut lines[i % n];
            *l = l.trim_start().to_string();
        }
    }
    lines.join("\n")
}

/// A parameter in one of the file's forms, with any values at all.
fn param() -> impl Strategy<Value = String> {
    let list = prop::collection::vec(nasty_scalar(), 0..5).prop_map(|v| v.join(", "));
    let plausible = prop_oneof![
        Just("0.1".to_string()),
        Just("3".to_string()),
        Just("1.0e-4".to_string())
    ];
    prop_oneof![
        3 => plausible.clone().prop_map(|v| format!("{{value: {v}}}")),
        3 => prop::collection::vec(plausible, 1..4).prop_map(|v| format!("{{values: [{}]}}", v.join(", "))),
        3 => (1u32..100, 1u32..100).prop_map(|(a, b)| format!(
            "{{distribution: log_uniform, min: {}, max: {}}}",
            f64::from(a.min(b)) * 1e-5,
            f64::from(a.max(b)) * 1e-5
        )),
        1 => nasty_scalar().prop_map(|v| format!("{{value: {v}}}")),
        1 => list.prop_map(|v| format!("{{values: [{v}]}}")),
        1 => (
            prop::sample::select(vec!["uniform", "log_uniform", "int_uniform", "normal"]),
            nasty_scalar(),
            nasty_scalar()
        )
            .prop_map(|(d, a, b)| format!("{{distribution: {d}, min: {a}, max: {b}}}")),
        1 => (0u32..20, 0u32..20).prop_map(|(a, b)| format!(
            "{{distribution: int_uniform, min: {a}, max: {b}}}"
        )),
        1 => (1u32..1000).prop_map(|n| format!(
            "{{values: [{}]}}",
            (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        )),
    ]
}

fn generated_sweep() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            5 => Just("grid"),
            5 => Just("random"),
            1 => Just("bayes")
        ],
        prop_oneof![6 => Just("5".to_string()), 1 => nasty_scalar()],
        prop::option::of(prop_oneof![6 => Just("8".to_string()), 1 => nasty_scalar()]),
        prop_oneof![6 => Just("3".to_string()), 1 => nasty_scalar()],
        prop_oneof![
            5 => prop::sample::select(vec!["fp32", "fp16", "bf16"]),
            1 => Just("fp8")
        ],
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "lr",
                    "label_smoothing",
                    "model",
                    "image_size",
                    "epochs",
                    "batch_size",
                    "augment.rotation.p",
                    "x",
                ]),
                param(),
            ),
            0..3,
        ),
        prop::bool::ANY,
        prop_oneof![6 => Just("2GiB".to_string()), 1 => nasty_scalar()],
    )
        .prop_map(
            |(method, folds, count, epochs, precision, params, command, memory)| {
                let mut s = format!("name: gen\nmethod: {method}\n");
                // A count belongs to random searches; sometimes give it anyway.
                let count = count.filter(|c| method == "random" || c.len() % 5 == 0);
                if let Some(c) = count {
                    s.push_str(&format!("count: {c}\nseed: 7\n"));
                }
                s.push_str(&format!("kfold:\n  folds: {folds}\n  seed: 42\ndataset: sketch\n"));
                if command {
                    s.push_str("command: [\"python3\", \"train.py\", \"--lr\", \"{lr}\"]\n");
                } else {
                    s.push_str(&format!(
                        "trainer:\n  model: small_cnn\n  epochs: {epochs}\n  precision: {precision}\n"
                    ));
                }
                if !params.is_empty() {
                    s.push_str("parameters:\n");
                    for (k, v) in params {
                        s.push_str(&format!("  {k}: {v}\n"));
                    }
                }
                s.push_str(&format!("resources:\n  gpu_memory: {memory}\nretries: 2\n"));
                s
            },
        )
}

proptest! {
    #![proptest_config(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn arbitrary_text_never_panics(src in "(?s).{0,400}") {
        check(&src);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_examples_are_parsed_or_refused_clearly(
        which in 0..EXAMPLES.len(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut src = EXAMPLES[which].to_string();
        for m in &mutations {
            src = apply(&src, m);
        }
        check(&src);
    }

    #[test]
    fn generated_sweeps_are_parsed_or_refused_clearly(src in generated_sweep()) {
        check(&src);
    }
}

#[test]
fn the_examples_parse() {
    for src in EXAMPLES {
        parse_sweep(src, FILE, Limits::default()).unwrap();
    }
}

#[test]
fn negative_epochs_are_refused_with_file_line_and_key() {
    let src =
        "name: n\nkfold: {folds: 5}\ndataset: sketch\ntrainer:\n  model: small_cnn\n  epochs: -3\n";
    let e = parse_sweep(src, FILE, Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fuzz.yaml:6: trainer.epochs"), "{e}");
    assert!(e.contains("-3"), "{e}");
}

/// The generators reach both outcomes (a fuzzer whose inputs are all
/// refused at the first key tests little).
#[test]
fn generated_and_mutated_inputs_reach_acceptance_and_refusal() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut tally = |what: &str, mut next: Box<dyn FnMut(&mut TestRunner) -> String>| {
        let accepted = (0..500)
            .filter(|_| parse_sweep(&next(&mut runner), FILE, Limits { max_jobs: 500 }).is_ok())
            .count();
        let refused = 500 - accepted;
        eprintln!("{what}: {accepted} accepted, {refused} refused");
        assert!(
            accepted >= 25 && refused >= 25,
            "{what}: {accepted} accepted, {refused} refused"
        );
    };
    tally(
        "generated",
        Box::new(|r| generated_sweep().new_tree(r).unwrap().current()),
    );
    let mutated = (0..EXAMPLES.len(), prop::collection::vec(mutation(), 1..4));
    tally(
        "mutated",
        Box::new(move |r| {
            let (which, mutations) = mutated.new_tree(r).unwrap().current();
            mutations
                .iter()
                .fold(EXAMPLES[which].to_string(), |src, m| apply(&src, m))
        }),
    );
}

/// The bounds above can fail: a parse of a file that expands into a large
/// grid is measured, and a deliberate 300 MiB allocation is caught.
#[test]
fn the_per_case_bounds_measure_what_a_case_holds() {
    let held = std::panic::catch_unwind(|| {
        bounded("big", || vec![1u8; 300 << 20].len());
    });
    assert!(held.is_err(), "300 MiB held must exceed the bound");
    let small = bounded("small", || vec![0u8; 1 << 20].len());
    assert_eq!(small, 1 << 20);
}
