//! Where each key of a YAML document is, so an error found after
//! deserialisation (say `kfold.folds` is 1) can still name its line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Maps key paths such as `kfold.folds` or `parameters.lr.values[1]` to the
/// 1-based line where that key (or list item) starts.
#[derive(Debug, Default, Clone)]
pub struct KeyLines {
    lines: HashMap<String, usize>,
    /// How deeply the document's collections nest (0: a bare scalar).
    pub depth: usize,
}

/// Keys nested deeper than this are not indexed: a hostile document nested
/// thousands of levels deep would otherwise cost memory quadratic in its
/// depth (every key's path repeats its ancestors'). The sweep parser
/// refuses such documents anyway (`sweep::MAX_DEPTH`).
const MAX_INDEXED_DEPTH: usize = 64;

/// Why a document does not parse, where: the line, the key path of the
/// collection being read, and yaml_rust2's words (without a location).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub path: String,
    pub message: String,
}

impl KeyLines {
    /// Indexes `src`. A document that does not parse yields an empty index.
    /// Its `depth` is how deep the document nested as far as it parsed.
    pub fn new(src: &str) -> Self {
        let (walker, result) = Self::walk(src);
        KeyLines {
            lines: if result.is_ok() {
                walker.lines
            } else {
                HashMap::new()
            },
            depth: walker.deepest,
        }
    }

    /// Feeds the document's events to a walker one at a time.
    /// (`Parser::load` would recurse once per level of nesting: a document
    /// of `- - - - ...` a million deep would overflow the stack.)
    fn walk(src: &str) -> (Walker, Result<(), yaml_rust2::ScanError>) {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(src);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => return (walker, Ok(())),
                Ok((ev, mark)) => walker.on_event(ev, mark),
                Err(e) => return (walker, Err(e)),
            }
        }
    }

    /// Indexes `src`, or says where and why it does not parse.
    pub fn parse(src: &str) -> Result<Self, SyntaxError> {
        let (walker, result) = Self::walk(src);
        if let Err(e) = result {
            let path = match walker.stack.last() {
                Some(Frame::Map { path, .. } | Frame::Seq { path, .. }) => path.clone(),
                None => String::new(),
            };
            return Err(SyntaxError {
                line: e.marker().line(),
                path,
                message: e.info().to_string(),
            });
        }
        Ok(KeyLines {
            lines: walker.lines,
            depth: walker.deepest,
        })
    }

    /// No key is indexed (an empty document, or one that does not parse).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The line of `path`, or of its longest prefix that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&l) = self.lines.get(p) {
                return Some(l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    /// A mapping; `key` is set while its value is being read.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    deepest: usize,
}

impl Walker {
    /// Path of the node that starts now (a value position); empty below
    /// [`MAX_INDEXED_DEPTH`].
    fn value_path(&self) -> String {
        if self.stack.len() > MAX_INDEXED_DEPTH {
            return String::new();
        }
        match self.stack.last() {
            Some(Frame::Map { path, key: Some(k) }) => join(path, k),
            Some(Frame::Seq { path, index }) => format!("{path}[{index}]"),
            Some(Frame::Map { path, key: None }) => path.clone(),
            None => String::new(),
        }
    }

    /// Called when a value node has been read completely.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn node_start(&mut self, mark: Marker) {
        if self.stack.len() > MAX_INDEXED_DEPTH {
            return;
        }
        let path = self.value_path();
        if let Some(Frame::Seq { .. }) = self.stack.last() {
            self.lines.entry(path).or_insert(mark.line());
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                let deep = self.stack.len() > MAX_INDEXED_DEPTH;
                if let Some(Frame::Map { path, key }) = self.stack.last_mut()
                    && key.is_none()
                {
                    if !deep {
                        let full = join(path, &text);
                        self.lines.entry(full).or_insert(mark.line());
                    }
                    *key = Some(text);
                    return;
                }
                self.node_start(mark);
                self.value_done();
            }
            Event::Alias(_) => {
                self.node_start(mark);
                self.value_done();
            }
            Event::MappingStart(..) => {
                self.node_start(mark);
                let path = self.value_path();
                self.stack.push(Frame::Map { path, key: None });
                self.deepest = self.deepest.max(self.stack.len());
            }
            Event::SequenceStart(..) => {
                self.node_start(mark);
                let path = self.value_path();
                self.stack.push(Frame::Seq { path, index: 0 });
                self.deepest = self.deepest.max(self.stack.len());
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_list_items() {
        let src = "name: x\nkfold:\n  folds: 5\n  seed: 1\nparameters:\n  lr: {values: [1, 2]}\n  wd:\n    values:\n      - 0.1\n      - 0.2\n";
        let k = KeyLines::new(src);
        assert_eq!(k.line_of("name"), Some(1));
        assert_eq!(k.line_of("kfold.folds"), Some(3));
        assert_eq!(k.line_of("kfold.seed"), Some(4));
        assert_eq!(k.line_of("parameters.lr.values"), Some(6));
        assert_eq!(k.line_of("parameters.wd.values[1]"), Some(10));
        // Unknown sub-path falls back to the nearest known ancestor.
        assert_eq!(k.line_of("kfold.learning_rate"), Some(2));
        assert_eq!(k.line_of("nothing"), None);
    }

    #[test]
    fn a_document_nested_thousands_deep_is_measured_in_linear_memory() {
        // Flow collections: yaml_rust2 stops at 255 levels with an error.
        let depth = 50_000;
        let src = format!("a: {}1{}", "[".repeat(depth), "]".repeat(depth));
        let e = KeyLines::parse(&src).unwrap_err();
        assert!(e.message.contains("recursion limit"), "{}", e.message);
        // Block collections have no such limit: measured, indexed to a cap.
        let block: String = (0..3_000)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let k = KeyLines::new(&block);
        assert!(k.depth >= 2_999, "{}", k.depth);
        assert!(k.lines.len() <= MAX_INDEXED_DEPTH + 2, "{}", k.lines.len());
        // Compact block sequences nest two bytes a level.
        let compact = format!("a:\n  {}x\n", "- ".repeat(200_000));
        assert!(KeyLines::new(&compact).depth >= 200_000);
    }

    #[test]
    fn broken_yaml_gives_empty_index() {
        let k = KeyLines::new("a: [1, 2\nb: 3");
        assert_eq!(k.line_of("b"), None);
    }

    #[test]
    fn a_syntax_error_names_its_line_and_the_collection_being_read() {
        let e = KeyLines::parse("name: x\nparameters:\n  lr: {values: [1, 2}\n").unwrap_err();
        assert_eq!((e.line, e.path.as_str()), (3, "parameters.lr.values"));
        assert!(e.message.contains("flow sequence"), "{}", e.message);
        assert!(
            !e.message.contains("line"),
            "no location in the words: {}",
            e.message
        );
    }
}
