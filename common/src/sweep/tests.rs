//! The sweep file, end to end: parse, validate, expand.

use super::*;

pub const CONTRACT: &str = r#"name: resnet-lr-ls
owner: user1               # optional; defaults to the submitting OS user
priority: 0                # optional; higher first within an owner's share
method: grid               # grid | random
# count: 12                # random only: number of sampled configurations
# seed: 7                  # random only
kfold:
  folds: 5
  seed: 42                 # stratified on the target column of train.csv
dataset: sketch            # a dataset name; each agent maps names to local paths
trainer:
  model: resnet50
  image_size: 224
  epochs: 30
  batch_size: 64
  optimizer: adamw
  precision: fp16          # fp32 | fp16 | bf16
parameters:
  lr: {values: [1.0e-4, 3.0e-4]}
  label_smoothing: {values: [0.0, 0.1]}
  weight_decay: {value: 0.05}
resources:
  gpu_memory: 10GiB        # optional estimate
retries: 2
ensemble:
  method: soft
"#;

fn parse(src: &str) -> Result<Sweep, SweepErrors> {
    parse_sweep(src, "sweep.yaml", Limits::default())
}

fn error_of(src: &str) -> String {
    parse(src).unwrap_err().to_string()
}

#[test]
fn contract_file_expands_to_twenty_jobs() {
    let s = parse(CONTRACT).unwrap();
    assert_eq!(s.configurations.len(), 4);
    assert_eq!(s.num_jobs(), 20);
    assert_eq!(s.file.owner.as_deref(), Some("user1"));
    assert_eq!(s.file.resources.gpu_memory, Some(Bytes::from_gib(10)));
    assert_eq!(
        s.file.ensemble.as_ref().unwrap().method,
        EnsembleMethod::Soft
    );
    // Last parameter varies fastest.
    let lrs: Vec<f64> = s
        .configurations
        .iter()
        .map(|c| c.params["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lrs, vec![1e-4, 1e-4, 3e-4, 3e-4]);
    let ls: Vec<f64> = s
        .configurations
        .iter()
        .map(|c| c.params["label_smoothing"].as_f64().unwrap())
        .collect();
    assert_eq!(ls, vec![0.0, 0.1, 0.0, 0.1]);
    let JobSpec::Trainer(cfg) = &s.configurations[3].spec else {
        panic!("trainer spec expected")
    };
    assert_eq!(cfg.lr, 3e-4);
    assert_eq!(cfg.label_smoothing, 0.1);
    assert_eq!(cfg.weight_decay, 0.05);
    assert_eq!(cfg.model, "resnet50");
    assert_eq!(cfg.precision, crate::trainer_config::Precision::Fp16);
}

#[test]
fn grid_over_model_and_nested_keys() {
    let src = CONTRACT.replace(
        "  weight_decay: {value: 0.05}\n",
        "  model: {values: [resnet18, efficientnet_b0, densenet121]}\n  augment.hflip.p: {values: [0.0, 0.5]}\n",
    );
    let s = parse(&src).unwrap();
    assert_eq!(s.configurations.len(), 2 * 2 * 3 * 2);
    let JobSpec::Trainer(cfg) = &s.configurations[1].spec else {
        panic!()
    };
    assert_eq!(cfg.model, "resnet18");
    assert_eq!(cfg.augment.hflip.p, 0.5);
}

fn random_src(seed: u64) -> String {
    format!(
        "name: r\nmethod: random\ncount: 12\nseed: {seed}\nkfold: {{folds: 3}}\ndataset: d\ntrainer: {{model: resnet18}}\nparameters:\n  lr: {{distribution: log_uniform, min: 1.0e-5, max: 1.0e-2}}\n  epochs: {{distribution: int_uniform, min: 3, max: 7}}\n  label_smoothing: {{distribution: uniform, min: 0.0, max: 0.2}}\n  optimizer: {{values: [adamw, sgd]}}\n"
    )
}

#[test]
fn random_search_is_seeded_and_within_bounds() {
    let a = parse(&random_src(7)).unwrap();
    let b = parse(&random_src(7)).unwrap();
    let c = parse(&random_src(8)).unwrap();
    assert_eq!(a.configurations, b.configurations);
    assert_ne!(a.configurations, c.configurations);
    assert_eq!(a.num_jobs(), 36);
    let mut optimizers = std::collections::HashSet::new();
    for conf in &a.configurations {
        let lr = conf.params["lr"].as_f64().unwrap();
        assert!((1e-5..=1e-2).contains(&lr), "{lr}");
        let epochs = conf.params["epochs"].as_i64().unwrap();
        assert!((3..=7).contains(&epochs));
        let ls = conf.params["label_smoothing"].as_f64().unwrap();
        assert!((0.0..=0.2).contains(&ls));
        optimizers.insert(conf.params["optimizer"].as_str().unwrap().to_string());
        let JobSpec::Trainer(cfg) = &conf.spec else {
            panic!()
        };
        assert_eq!(cfg.epochs as i64, epochs);
    }
    assert_eq!(optimizers.len(), 2, "12 draws should hit both optimizers");
}

#[test]
fn log_uniform_spreads_over_decades() {
    let src = random_src(1).replace("count: 12", "count: 400");
    let s = parse(&src).unwrap();
    let below_1e4 = s
        .configurations
        .iter()
        .filter(|c| c.params["lr"].as_f64().unwrap() < 1e-4)
        .count();
    // A third of the log range lies below 1e-4; a plain uniform would put
    // about 1% there.
    assert!((90..=180).contains(&below_1e4), "{below_1e4}");
}

#[test]
fn command_sweep_with_placeholders() {
    let src = "name: c\nkfold: {folds: 2}\ndataset: d\ncommand: [python3, train.py, --lr, '{lr}', --out, '{output_dir}']\nparameters:\n  lr: {values: [0.1, 0.2, 0.3]}\n";
    let s = parse(src).unwrap();
    assert_eq!(s.num_jobs(), 6);
    assert_eq!(s.kind(), "command");
    let bad = src.replace("{output_dir}", "{outdir}");
    let e = error_of(&bad);
    assert!(
        e.contains("sweep.yaml:4: command[5]: unknown placeholder `{outdir}`"),
        "{e}"
    );
}

#[test]
fn fill_placeholders_substitutes_and_escapes() {
    let lookup = |n: &str| (n == "lr").then(|| "0.1".to_string());
    assert_eq!(fill_placeholders("--lr={lr}", lookup).unwrap(), "--lr=0.1");
    assert_eq!(fill_placeholders("{{x}}", lookup).unwrap(), "{x}");
    assert!(fill_placeholders("{nope}", lookup).is_err());
    assert_eq!(placeholders("a{b}c{{d}}").unwrap(), vec!["b"]);
    assert!(placeholders("a{b").is_err());
}

#[test]
fn unknown_key_names_path_and_line() {
    let src = CONTRACT.replace("  seed: 42 ", "  learning_rate: 42 ");
    let e = error_of(&src);
    assert!(
        e.starts_with("sweep.yaml:9: kfold.learning_rate: unknown key; expected"),
        "{e}"
    );
}

#[test]
fn semantic_errors_are_all_reported_with_lines() {
    let src = CONTRACT
        .replace("folds: 5", "folds: 1")
        .replace("[0.0, 0.1]", "[]");
    let e = parse(&src).unwrap_err();
    let paths: Vec<_> = e
        .problems
        .iter()
        .map(|p| (p.path.as_str(), p.line))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("kfold.folds", Some(8)),
            ("parameters.label_smoothing.values", Some(20))
        ]
    );
}

#[test]
fn bad_trainer_value_from_a_parameter_points_at_it() {
    let src = CONTRACT.replace("[1.0e-4, 3.0e-4]", "[1.0e-4, -3.0e-4]");
    let e = error_of(&src);
    assert!(
        e.contains("sweep.yaml:19: parameters.lr.values[1]: must be a positive number"),
        "{e}"
    );
    let src = CONTRACT.replace("precision: fp16", "precision: fp8");
    let e = error_of(&src);
    assert!(
        e.contains("sweep.yaml:17: trainer.precision: unknown variant `fp8`"),
        "{e}"
    );
    let src = CONTRACT.replace("weight_decay: {value", "weight_decy: {value");
    let e = error_of(&src);
    assert!(
        e.contains("sweep.yaml:21: parameters.weight_decy.value: unknown key"),
        "{e}"
    );
}

#[test]
fn cap_is_checked_before_expanding() {
    let src = "name: big\nkfold: {folds: 5}\ndataset: d\ntrainer: {}\nparameters:\n  epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n  batch_size: {values: [1,2,3,4,5,6,7,8,9,10]}\n  step_epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n  seed: {values: [1,2,3,4,5,6,7,8,9,10]}\n";
    let e = parse_sweep(src, "big.yaml", Limits { max_jobs: 10_000 }).unwrap_err();
    assert!(
        e.to_string().contains(
            "expands to 50000 jobs (10000 configurations x 5 folds), more than the limit of 10000"
        ),
        "{e}"
    );
}

#[test]
fn ten_thousand_jobs_fit_the_default_cap() {
    let src = "name: big\nkfold: {folds: 5}\ndataset: d\ntrainer: {model: resnet18}\nparameters:\n  lr: {values: [0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0]}\n  seed: {values: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}\n  epochs: {values: [1,2,3,4,5,6,7,8,9,10]}\n";
    let s = parse(src).unwrap();
    assert_eq!(s.num_jobs(), 10_000);
}

#[test]
fn set_dotted_creates_nested_objects() {
    let mut v = serde_json::json!({"augment": {"noise": {"p": 0.1}}});
    set_dotted(&mut v, "augment.hflip.p", serde_json::json!(0.5));
    set_dotted(&mut v, "lr", serde_json::json!(1));
    assert_eq!(
        v,
        serde_json::json!({"augment": {"noise": {"p": 0.1}, "hflip": {"p": 0.5}}, "lr": 1})
    );
}

/// Hostile files are refused with a clear error, quickly, whatever they
/// hold (the server parses what anyone sends).
mod hostile {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sweep::{MAX_DEPTH, MAX_FILE_BYTES};

    const HEAD: &str = "name: h\nkfold: {folds: 2}\ndataset: d\ncommand: [\"true\"]\n";

    fn refused_quickly(src: &str) -> String {
        let start = Instant::now();
        let e = parse_sweep(src, "h.yaml", Limits::default()).unwrap_err();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}: {e}");
        e.to_string()
    }

    #[test]
    fn deep_block_nesting() {
        let deep: String = (0..1_000)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i + 2)))
            .collect();
        let e = refused_quickly(&format!("{HEAD}parameters:\n{deep}"));
        assert!(
            e.contains(&format!("more than {MAX_DEPTH} levels deep")),
            "{e}"
        );
    }

    #[test]
    fn deep_flow_nesting() {
        let n = 100_000;
        let e = refused_quickly(&format!(
            "{HEAD}parameters: {{x: {{values: {}1{}}}}}\n",
            "[".repeat(n),
            "]".repeat(n)
        ));
        assert!(
            e.contains(&format!("more than {MAX_DEPTH} levels deep")),
            "{e}"
        );
    }

    #[test]
    fn an_alias_bomb() {
        let mut src = format!("{HEAD}a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            src += &format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", "));
        }
        let e = refused_quickly(&src);
        assert!(e.contains("aliases expand to too many nodes"), "{e}");
    }

    #[test]
    fn a_file_over_the_size_limit() {
        let src = format!("{HEAD}# {}\n", "x".repeat(MAX_FILE_BYTES));
        let e = refused_quickly(&src);
        assert!(e.contains("a sweep file may have at most"), "{e}");
    }

    #[test]
    fn a_grid_of_long_values_that_would_multiply_into_gigabytes() {
        // 70 x 70 configurations (9,800 jobs: within max_jobs), each
        // holding a 5 KB value of each parameter: a 700 KB file that would
        // expand to about 100 MB.
        let long = |p: &str| {
            (0..70)
                .map(|i| format!("\"{p}{i}{}\"", "v".repeat(5_000)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let src = format!(
            "{HEAD}parameters:\n  a: {{values: [{}]}}\n  b: {{values: [{}]}}\n",
            long("a"),
            long("b")
        );
        let e = refused_quickly(&src);
        assert!(e.contains("would take about"), "{e}");
    }
}

#[test]
fn compact_sequences_nested_half_a_million_deep_do_not_overflow_the_stack() {
    let src = format!(
        "name: h\nkfold: {{folds: 2}}\ndataset: d\ncommand: [\"true\"]\nparameters:\n  x:\n    values:\n      {}x\n",
        "- ".repeat(500_000)
    );
    // On a thread with a small stack, as a server's worker might have.
    let e = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            parse_sweep(&src, "h.yaml", Limits::default())
                .unwrap_err()
                .to_string()
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert!(e.contains("levels deep"), "{e}");
}

#[test]
fn kfold_split_sklearn_is_parsed_and_checked() {
    let sweep = parse(&CONTRACT.replace("  seed: 42 ", "  split: sklearn\n  seed: 42 ")).unwrap();
    assert_eq!(sweep.file.kfold.split, crate::folds::Split::Sklearn);
    // The default stays sweepfold's own split.
    assert_eq!(
        parse(CONTRACT).unwrap().file.kfold.split,
        crate::folds::Split::Sweepfold
    );

    let e = error_of(&CONTRACT.replace("  seed: 42 ", "  split: numpy\n  seed: 42 "));
    assert!(e.contains("kfold.split") && e.contains("sklearn"), "{e}");
    let e = error_of(&CONTRACT.replace("  seed: 42 ", "  split: sklearn\n  seed: 4294967296 "));
    assert!(
        e.contains("kfold.seed: must be at most 4294967295 for `split: sklearn`"),
        "{e}"
    );
}

#[test]
fn a_tpe_sweep_plans_count_configurations_and_proposes_them_later() {
    let src = r#"name: tpe-lr
method: tpe
count: 20
parallel: 3
seed: 5
objective: {metric: oof_log_loss}
kfold: {folds: 3}
dataset: sketch
trainer: {model: resnet50, epochs: 4}
parameters:
  lr: {distribution: log_uniform, min: 1.0e-4, max: 1.0e-1}
  epochs: {distribution: int_uniform, min: 2, max: 6}
  optimizer: {values: [sgd, adamw]}
  label_smoothing: {value: 0.1}
"#;
    let s = parse(src).unwrap();
    assert!(s.configurations.is_empty());
    assert_eq!(s.planned_configurations(), 20);
    assert_eq!(s.search_seed(), 5);
    let objective = s.file.objective.unwrap();
    assert_eq!(objective.goal(), crate::search::Goal::Minimize);
    let space = s.space();
    assert!(space.searchable());
    assert_eq!(space.dims.len(), 4);
    // A proposal becomes a configuration like any expanded one.
    let params = crate::search::startup_draw(&space, 5, 0);
    let c = configuration(&s.file, 0, params.clone()).unwrap();
    assert_eq!(c.params, params);
    let JobSpec::Trainer(cfg) = &c.spec else {
        panic!("a trainer sweep")
    };
    assert_eq!(Value::from(cfg.lr), params["lr"]);
    assert_eq!(cfg.label_smoothing, 0.1);
}
