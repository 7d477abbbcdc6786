//! A job's output as the agent reads it: any bytes at all. Pure and
//! bounded, so that nothing a job prints can kill, stall or wedge it:
//!
//! - Lines end at `\n`, `\r\n` or a lone `\r` (a progress bar redraws its
//!   line with `\r`; each redraw is a line that the next one replaces in the
//!   tail, see [`Tail`]).
//! - Bytes that are not UTF-8 become U+FFFD; the pipe is never closed on
//!   them (closing it would kill the job with SIGPIPE on its next write).
//! - A line longer than [`MAX_LINE_BYTES`] is cut: its first bytes are kept
//!   and the rest is counted and dropped as it streams past, so memory stays
//!   bounded however long the line is.
//! - The tail sent to the coordinator holds at most a number of lines and
//!   [`MAX_TAIL_BYTES`] bytes.

use std::collections::VecDeque;

/// The most of one line that is kept (the rest is counted, not stored).
pub const MAX_LINE_BYTES: usize = 8 * 1024;

/// The most the log tail sent with a job's report may hold. The
/// coordinator accepts more (`validate::MAX_LOG_TAIL`), so a report is never
/// refused for its tail. One line takes at most half of it, which a cut line
/// ([`MAX_LINE_BYTES`] and its note) fits whole.
pub const MAX_TAIL_BYTES: usize = 32 * 1024;

/// One line of output, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Ended by a lone `\r`: a redraw that the next line replaces.
    pub redraw: bool,
    /// Bytes of the line beyond [`MAX_LINE_BYTES`] that were dropped.
    pub cut_bytes: u64,
}

impl Line {
    /// Whether the line is whole (an event line must be, to be parsed).
    pub fn is_whole(&self) -> bool {
        self.cut_bytes == 0
    }

    /// The text as the log tail shows it.
    pub fn display(&self) -> String {
        if self.cut_bytes == 0 {
            self.text.clone()
        } else {
            format!("{} [… {} more bytes cut]", self.text, self.cut_bytes)
        }
    }
}

/// Splits a byte stream into [`Line`]s, holding at most
/// [`MAX_LINE_BYTES`] of a line at a time.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
    cut: u64,
    /// The last byte fed was a `\r` that may be the start of `\r\n`.
    pending_cr: bool,
}

impl LineSplitter {
    pub fn new() -> LineSplitter {
        LineSplitter::default()
    }

    /// Feeds bytes; returns the lines they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    out.push(self.take(false));
                    continue;
                }
                out.push(self.take(true));
            }
            match b {
                b'\n' => out.push(self.take(false)),
                b'\r' => self.pending_cr = true,
                _ if self.buf.len() < MAX_LINE_BYTES => self.buf.push(b),
                _ => self.cut += 1,
            }
        }
        out
    }

    /// The stream ended: the last line, if it had no terminator.
    pub fn finish(&mut self) -> Option<Line> {
        if self.pending_cr {
            self.pending_cr = false;
            return Some(self.take(true));
        }
        (!self.buf.is_empty() || self.cut > 0).then(|| self.take(false))
    }

    fn take(&mut self, redraw: bool) -> Line {
        let bytes = std::mem::take(&mut self.buf);
        let cut_bytes = std::mem::take(&mut self.cut);
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Line {
            text,
            redraw,
            cut_bytes,
        }
    }
}

/// The last lines of a job's output, bounded in lines and in bytes. A redraw
/// line (`\r`) is replaced by the line after it, so a progress bar takes one
/// line of the tail, not thousands.
#[derive(Debug)]
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    last_was_redraw: bool,
}

impl Tail {
    pub fn new(max_lines: usize) -> Tail {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            last_was_redraw: false,
        }
    }

    pub fn push(&mut self, line: &Line) {
        if self.last_was_redraw
            && let Some(old) = self.lines.pop_back()
        {
            self.bytes -= old.len() + 1;
        }
        self.last_was_redraw = line.redraw;
        let mut text = line.display();
        if text.len() > MAX_TAIL_BYTES / 2 {
            let mut end = MAX_TAIL_BYTES / 2;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        self.bytes += text.len() + 1;
        self.lines.push_back(text);
        while self.lines.len() > self.max_lines || self.bytes > MAX_TAIL_BYTES {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.len() + 1;
        }
    }

    /// The lines pushed since the last `take` (joined by `\n`), leaving
    /// the tail empty; `None` when there are none. For the live log: each
    /// batch of new lines is sent once.
    pub fn take(&mut self) -> Option<String> {
        if self.lines.is_empty() {
            return None;
        }
        let text = self.text();
        self.lines.clear();
        self.bytes = 0;
        self.last_was_redraw = false;
        Some(text)
    }

    /// The tail as one string, lines joined by `\n`.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn splits_on_newlines_crlf_and_lone_carriage_returns() {
        let mut s = LineSplitter::new();
        let mut lines = s.feed(b"one\ntwo\r\nbar 10%\rbar 20%\rthree");
        // `three` has no terminator yet; `\r` at a chunk's end waits for `\n`.
        lines.extend(s.feed(b"\r"));
        lines.extend(s.feed(b"\n"));
        assert_eq!(texts(&lines), ["one", "two", "bar 10%", "bar 20%", "three"]);
        assert_eq!(
            lines.iter().map(|l| l.redraw).collect::<Vec<_>>(),
            [false, false, true, true, false]
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let mut s = LineSplitter::new();
        let lines = s.feed(b"ok \xff\xfe bytes\n\xc3\xa9\n");
        assert_eq!(texts(&lines), ["ok \u{fffd}\u{fffd} bytes", "é"]);
    }

    #[test]
    fn a_huge_line_is_cut_and_memory_stays_bounded() {
        let mut s = LineSplitter::new();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            assert!(s.feed(&chunk).is_empty());
            assert!(s.buf.len() <= MAX_LINE_BYTES);
        }
        let lines = s.feed(b"\nnext\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE_BYTES);
        assert_eq!(lines[0].cut_bytes, (64u64 << 20) - MAX_LINE_BYTES as u64);
        assert!(!lines[0].is_whole());
        assert!(lines[0].display().ends_with("more bytes cut]"));
        assert_eq!(lines[1].text, "next");
    }

    #[test]
    fn the_last_line_without_a_terminator_is_kept() {
        let mut s = LineSplitter::new();
        assert!(s.feed(b"partial").is_empty());
        assert_eq!(s.finish().map(|l| l.text), Some("partial".to_string()));
        let mut s = LineSplitter::new();
        s.feed(b"bar\r");
        assert!(s.finish().is_some_and(|l| l.redraw));
    }

    #[test]
    fn the_tail_is_bounded_in_lines_and_bytes_and_collapses_redraws() {
        let mut s = LineSplitter::new();
        let mut tail = Tail::new(3);
        for l in s.feed(b"a\nb\rc\rd\ne\n") {
            tail.push(&l);
        }
        assert_eq!(tail.text(), "a\nd\ne");
        let mut tail = Tail::new(1000);
        let long = Line {
            text: "é".repeat(MAX_TAIL_BYTES),
            redraw: false,
            cut_bytes: 0,
        };
        for _ in 0..10 {
            tail.push(&long);
        }
        assert!(tail.text().len() <= MAX_TAIL_BYTES);
        assert!(!tail.text().is_empty());
        // A line cut by the splitter keeps its note in the tail.
        let mut s = LineSplitter::new();
        s.feed(&vec![b'y'; 10 * MAX_LINE_BYTES]);
        tail.push(&s.finish().unwrap());
        assert!(
            tail.text().ends_with("more bytes cut]"),
            "{}",
            &tail.text()[tail.text().len() - 40..]
        );
    }

    #[test]
    fn take_hands_out_each_batch_of_lines_once() {
        let mut s = LineSplitter::new();
        let mut live = Tail::new(100);
        assert_eq!(live.take(), None);
        for l in s.feed(b"epoch 1\nbar 10%\rbar 90%\n") {
            live.push(&l);
        }
        assert_eq!(live.take().as_deref(), Some("epoch 1\nbar 90%"));
        assert_eq!(live.take(), None);
        for l in s.feed(b"epoch 2\n") {
            live.push(&l);
        }
        assert_eq!(live.take().as_deref(), Some("epoch 2"));
    }
}
