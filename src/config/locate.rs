//! Maps YAML paths (`routes[2].forward[0].url`) to 1-based line/column positions in the source text, so config errors can point at the exact spot.
//!
//! serde_yaml drops positions, and semantic errors are only found after
//! deserializing, so the source is walked a second time with yaml-rust2's
//! event parser to recover where each path lives.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line/column; columns count characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    // yaml-rust2 markers have 1-based lines but 0-based (character) columns.
    fn from_marker(mark: Marker) -> Position {
        Position { line: mark.line(), column: mark.col() + 1 }
    }

    fn before(self, other: Position) -> bool {
        (self.line, self.column) < (other.line, other.column)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Index from YAML path to source position for the first document of a stream.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    positions: HashMap<String, Position>,
}

impl Locator {
    /// Never fails: on a syntax error, whatever was indexed before it is kept.
    pub fn new(yaml_text: &str) -> Locator {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(yaml_text);
        while let Ok((event, mark)) = parser.next_token() {
            if matches!(event, Event::DocumentEnd | Event::StreamEnd) {
                break;
            }
            builder.event(&event, Position::from_marker(mark));
        }
        Locator { positions: builder.positions }
    }

    pub fn exact(&self, path: &str) -> Option<Position> {
        self.positions.get(path).copied()
    }

    /// `exact`, else the nearest ancestor present in the document.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut path = path;
        loop {
            if let Some(pos) = self.exact(path) {
                return Some(pos);
            }
            if path.is_empty() {
                return None;
            }
            let cut = if path.ends_with(']') { path.rfind('[') } else { path.rfind('.') };
            path = &path[..cut.unwrap_or(0)];
        }
    }
}

enum Frame {
    // A None path means the node is not addressable (inside a complex key).
    Seq {
        path: Option<String>,
        next: usize,
    },
    Map {
        path: Option<String>,
        // Some while the current entry's value is still to come.
        value_path: Option<Option<String>>,
    },
}

#[derive(Default)]
struct Builder {
    positions: HashMap<String, Position>,
    stack: Vec<Frame>,
}

impl Builder {
    fn event(&mut self, event: &Event, at: Position) {
        match event {
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(text, ..) => {
                self.place(Some(text), at);
            }
            Event::Alias(_) => {
                self.place(None, at);
            }
            Event::SequenceStart(..) => {
                let path = self.place(None, at);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingStart(..) => {
                let path = self.place(None, at);
                self.stack.push(Frame::Map { path, value_path: None });
            }
            _ => {}
        }
    }

    /// Records the node starting at `at` (mapping values are skipped: they
    /// point at their key) and returns the path its children extend.
    fn place(&mut self, key_text: Option<&str>, at: Position) -> Option<String> {
        let Some(frame) = self.stack.last_mut() else {
            self.positions.entry(String::new()).or_insert(at);
            return Some(String::new());
        };
        let (record, children) = match frame {
            Frame::Seq { path, next } => {
                let path = path.as_ref().map(|p| format!("{p}[{next}]"));
                *next += 1;
                (path.clone(), path)
            }
            Frame::Map { value_path: pending @ Some(_), .. } => (None, pending.take().flatten()),
            Frame::Map { path, value_path } => {
                let parent = path.as_deref();
                // A block mapping's start mark sits on its first `:`, i.e. after
                // the first key; pull the mapping's own position back to it.
                if let Some(start) = parent.and_then(|p| self.positions.get_mut(p)) {
                    if at.before(*start) {
                        *start = at;
                    }
                }
                let child = match (parent, key_text) {
                    (Some(""), Some(key)) => Some(key.to_string()),
                    (Some(parent), Some(key)) => Some(format!("{parent}.{key}")),
                    _ => None,
                };
                *value_path = Some(child.clone());
                // Complex (non-scalar) keys have no path syntax for their children.
                (child, None)
            }
        };
        if let Some(p) = record {
            self.positions.entry(p).or_insert(at);
        }
        children
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    const CONFIG: &str = r#"listen: "0.0.0.0:8080"
include: [a.yaml, b.yaml]
routes:
  - name: codeup
    match:
      headers:
        Codeup-Event: push
      body:
        - { path: $.ref, regex: "refs/heads/main" }
        - { path: $.标题, regex: "x" }
    forward:
      - url: https://example.com/a
  - name: dingtalk
    forward:
      - url: https://oapi.dingtalk.com/robot/send
        body: |
          {"msgtype": "text"}
          second line
        timeout: 5s
"#;

    #[test]
    fn top_level_and_root() {
        let loc = Locator::new(CONFIG);
        assert_eq!(loc.exact(""), pos(1, 1));
        assert_eq!(loc.exact("listen"), pos(1, 1));
        assert_eq!(loc.exact("include"), pos(2, 1));
        assert_eq!(loc.exact("include[1]"), pos(2, 19));
        assert_eq!(loc.exact("routes"), pos(3, 1));
    }

    #[test]
    fn nested_mapping_in_sequence() {
        let loc = Locator::new(CONFIG);
        assert_eq!(loc.exact("routes[1]"), pos(13, 5));
        assert_eq!(loc.exact("routes[1].forward"), pos(14, 5));
        assert_eq!(loc.exact("routes[1].forward[0]"), pos(15, 9));
        assert_eq!(loc.exact("routes[1].forward[0].url"), pos(15, 9));
        assert_eq!(loc.exact("routes[0].match.headers.Codeup-Event"), pos(7, 9));
    }

    #[test]
    fn flow_mappings_count_characters() {
        let loc = Locator::new(CONFIG);
        assert_eq!(loc.exact("routes[0].match.body[0]"), pos(9, 11));
        assert_eq!(loc.exact("routes[0].match.body[0].regex"), pos(9, 26));
        assert_eq!(loc.exact("routes[0].match.body[1].regex"), pos(10, 25));
        let loc = Locator::new("a: { 名前: 1, k: [x, y] }\n");
        assert_eq!(loc.exact("a.k"), pos(1, 13));
        assert_eq!(loc.exact("a.k[1]"), pos(1, 20));
    }

    #[test]
    fn block_scalar_then_key() {
        let loc = Locator::new(CONFIG);
        assert_eq!(loc.exact("routes[1].forward[0].body"), pos(16, 9));
        assert_eq!(loc.exact("routes[1].forward[0].timeout"), pos(19, 9));
    }

    #[test]
    fn find_falls_back_to_ancestor() {
        let loc = Locator::new(CONFIG);
        assert_eq!(loc.find("routes[1].forward[0].url"), pos(15, 9));
        assert_eq!(loc.find("routes[1].forward[0].headers.X-Token"), pos(15, 9));
        assert_eq!(loc.find("routes[7].name"), pos(3, 1));
        assert_eq!(loc.find("nope"), pos(1, 1));
        assert_eq!(Locator::new("").find("nope"), None);
    }

    #[test]
    fn syntax_error_keeps_earlier_keys() {
        let loc = Locator::new("a: 1\nb:\n  c: [1, 2\nd: 3\n");
        assert_eq!(loc.exact("a"), pos(1, 1));
        assert_eq!(loc.exact("b.c"), pos(3, 3));
        assert_eq!(loc.exact("d"), None);
    }

    #[test]
    fn empty_text_and_documents() {
        assert_eq!(Locator::new("").exact(""), None);
        let loc = Locator::new("---\nx: &a 1\ny: *a\n<<: *a\n---\nz: 2\n");
        assert_eq!(loc.exact("y"), pos(3, 1));
        assert_eq!(loc.exact("<<"), pos(4, 1));
        assert_eq!(loc.exact("z"), None);
        let loc = Locator::new("- a\n- - b\n  - &n {k: 1}\n- ? [c]\n  : d\n- *n\n");
        assert_eq!(loc.exact("[1][1].k"), pos(3, 9));
        assert_eq!(loc.exact("[3]"), pos(6, 3));
        assert_eq!(loc.find("[2].c"), pos(4, 3));
        assert_eq!(Position { line: 3, column: 7 }.to_string(), "3:7");
    }
}
