//! A small, safe interpreter for the subset of Python's pickle protocol (2–5) that `torch.save`
//! writes for state dicts. It builds a value tree and never executes anything: `GLOBAL`s become
//! inert [`Value::Global`] names and `REDUCE`s become [`Value::Call`] records that the caller
//! interprets (only a handful of torch/collections callables are ever accepted there).

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    /// `callable(*args)`, recorded, not run.
    Call {
        callable: Box<Value>,
        args: Vec<Value>,
    },
    /// A persistent id (torch: a storage reference).
    PersistentId(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_items(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("the pickle stream ends early (at byte {0}): the file is truncated")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{op:02x} at byte {pos}: not a torch state dict")]
    UnsupportedOpcode { op: u8, pos: usize },
    #[error("malformed pickle at byte {pos}: {problem}")]
    Malformed { pos: usize, problem: String },
    /// The stream would build more than a state dict ever needs: nesting deeper than
    /// [`MAX_DEPTH`], or more than [`MAX_VALUES`] values (memo entries re-used over and over
    /// expand exponentially: a few hundred bytes can describe more values than memory holds).
    #[error("the pickle at byte {pos} {problem}: refusing a file built to exhaust the reader")]
    TooLarge { pos: usize, problem: String },
}

/// Deepest nesting of containers accepted. A `torch.save` state dict is about 6 deep (dict →
/// `_rebuild_tensor_v2` call → argument tuple → storage id tuple); training checkpoints that
/// wrap it (optimizer state, callbacks, hyper-parameters) add a handful of levels. Dropping and
/// cloning a [`Value`] recurse, so depth must stay far below what a thread's stack holds.
pub const MAX_DEPTH: u32 = 200;

/// Most values the stream may create, counting each string or byte string as one value per 64
/// bytes, and each copy of a memo entry at its full size. An EfficientNetV2-S state dict builds
/// about 30,000; a training checkpoint with optimizer state a few times that.
pub const MAX_VALUES: u64 = 1 << 22;

/// Parse one pickle stream up to its STOP opcode.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), created: 0 }.run()
}

/// A value on the stack or in the memo, with what it cost to build.
#[derive(Clone)]
struct Node {
    value: Value,
    /// Containers between this value and its leaves (0 for a scalar).
    depth: u32,
    /// Values in this tree, with strings and bytes counted by length (see [`MAX_VALUES`]).
    size: u64,
}

impl Node {
    fn leaf(value: Value) -> Self {
        let size = match &value {
            Value::Str(s) => 1 + s.len() as u64 / 64,
            Value::Bytes(b) => 1 + b.len() as u64 / 64,
            _ => 1,
        };
        Node { value, depth: 0, size }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Node>,
    marks: Vec<usize>,
    memo: HashMap<u32, Node>,
    /// Values created so far, memo copies included: bounded by [`MAX_VALUES`].
    created: u64,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or(PickleError::Truncated(self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated(self.data.len()))?;
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.pos += len + 1;
        Ok(text)
    }
    fn string(&mut self, len: usize) -> Result<Value, PickleError> {
        let pos = self.pos;
        let bytes = self.take(len)?.to_vec();
        String::from_utf8(bytes).map(Value::Str).map_err(|_| self.malformed_at(pos, "invalid UTF-8 in a string"))
    }
    fn malformed_at(&self, pos: usize, problem: &str) -> PickleError {
        PickleError::Malformed { pos, problem: problem.to_string() }
    }

    /// Count `size` more values against [`MAX_VALUES`].
    fn spend(&mut self, size: u64) -> Result<(), PickleError> {
        self.created = self.created.saturating_add(size);
        if self.created > MAX_VALUES {
            return Err(PickleError::TooLarge {
                pos: self.pos,
                problem: format!("expands to more than {MAX_VALUES} values (memo entries copied over and over)"),
            });
        }
        Ok(())
    }
    fn push(&mut self, value: Value) -> Result<(), PickleError> {
        let node = Node::leaf(value);
        self.spend(node.size)?;
        self.stack.push(node);
        Ok(())
    }
    /// A container holding `items`: one level deeper than the deepest of them.
    fn container(&mut self, items: Vec<Node>, build: impl FnOnce(Vec<Value>) -> Value) -> Result<Node, PickleError> {
        let depth = 1 + items.iter().map(|n| n.depth).max().unwrap_or(0);
        self.check_depth(depth)?;
        self.spend(1)?;
        let size = 1 + items.iter().map(|n| n.size).sum::<u64>();
        Ok(Node { value: build(items.into_iter().map(|n| n.value).collect()), depth, size })
    }
    fn check_depth(&self, depth: u32) -> Result<(), PickleError> {
        if depth > MAX_DEPTH {
            return Err(PickleError::TooLarge {
                pos: self.pos,
                problem: format!("nests containers more than {MAX_DEPTH} deep"),
            });
        }
        Ok(())
    }
    fn pop(&mut self) -> Result<Node, PickleError> {
        self.stack.pop().ok_or_else(|| self.malformed_at(self.pos, "stack underflow"))
    }
    /// Add `items` into the container on top of the stack (`add` puts the values in place).
    fn extend_top(
        &mut self,
        items: Vec<Node>,
        add: impl FnOnce(&mut Value, Vec<Value>) -> Result<(), &'static str>,
    ) -> Result<(), PickleError> {
        let pos = self.pos;
        let top = self.stack.last_mut().ok_or(PickleError::Malformed { pos, problem: "stack underflow".into() })?;
        let depth = top.depth.max(1 + items.iter().map(|n| n.depth).max().unwrap_or(0));
        top.depth = depth;
        top.size = top.size.saturating_add(items.iter().map(|n| n.size).sum::<u64>());
        add(&mut top.value, items.into_iter().map(|n| n.value).collect())
            .map_err(|problem| PickleError::Malformed { pos, problem: problem.into() })?;
        self.check_depth(depth)
    }
    fn pop_mark(&mut self) -> Result<Vec<Node>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed_at(self.pos, "no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed_at(self.pos, "MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }
    /// A memo entry pushed again: a copy, counted at its full size.
    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let node = self.memo.get(&key).ok_or_else(|| self.malformed_at(self.pos, &format!("memo key {key} unset")))?;
        let size = node.size;
        self.spend(size)?;
        let node = self.memo[&key].clone();
        self.stack.push(node);
        Ok(())
    }
    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let size = self.stack.last().ok_or_else(|| self.malformed_at(self.pos, "stack underflow"))?.size;
        // The memo holds a copy: count it too.
        self.spend(size)?;
        let node = self.stack.last().cloned().expect("checked above");
        self.memo.insert(key, node);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Node>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed_at(self.pos, "odd number of dict items"));
        }
        self.extend_top(items, |top, values| match top {
            Value::Dict(entries) => {
                let mut it = values.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Ok(())
            }
            _ => Err("SETITEMS on a non-dict"),
        })
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO n
                }
                0x95 => {
                    self.u64()?; // FRAME length: frames are only a read-ahead hint
                }
                b'.' => return self.pop().map(|n| n.value), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    if n > 8 {
                        return Err(self.malformed_at(at, "integer wider than 64 bits"));
                    }
                    let mut buf = [if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 }; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).map_err(|_| PickleError::Truncated(self.pos))?;
                    let s = self.string(n)?;
                    self.push(s)?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global { module, name })?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?.value;
                    let module = self.pop()?.value;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.push(Value::Global { module, name })?,
                        _ => return Err(self.malformed_at(at, "STACK_GLOBAL needs two strings")),
                    }
                }
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    let node = self.container(items, Value::Tuple)?;
                    self.stack.push(node)
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.malformed_at(at, "stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let node = self.container(items, Value::Tuple)?;
                    self.stack.push(node)
                }
                b']' => self.push(Value::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    let node = self.container(items, Value::List)?;
                    self.stack.push(node)
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()))?;
                    self.set_items(items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], |top, values| match top {
                        Value::List(l) => {
                            l.extend(values);
                            Ok(())
                        }
                        _ => Err("APPEND to a non-list"),
                    })?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, |top, values| match top {
                        Value::List(l) => {
                            l.extend(values);
                            Ok(())
                        }
                        _ => Err("APPENDS to a non-list"),
                    })?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let node = self.container(vec![pid], |mut v| Value::PersistentId(Box::new(v.remove(0))))?;
                    self.stack.push(node)
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: recorded as a call. `OrderedDict()` becomes a dict at once,
                    // so that the SETITEMS that follow can fill it.
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    if !matches!(args.value, Value::Tuple(_)) {
                        return Err(self.malformed_at(at, "REDUCE arguments are not a tuple"));
                    }
                    let node = if callable.value.is_global("collections", "OrderedDict")
                        && matches!(&args.value, Value::Tuple(a) if a.is_empty())
                    {
                        Node::leaf(Value::Dict(Vec::new()))
                    } else {
                        self.container(vec![callable, args], |mut v| {
                            let args = match v.pop() {
                                Some(Value::Tuple(a)) => a,
                                _ => Vec::new(),
                            };
                            Value::Call { callable: Box::new(v.remove(0)), args }
                        })?
                    };
                    self.stack.push(node)
                }
                b'b' => {
                    // BUILD: object state (e.g. the state dict's `_metadata`): not needed, dropped.
                    self.pop()?;
                }
                _ => return Err(PickleError::UnsupportedOpcode { op, pos: at }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_2_dict_with_memo_and_calls() {
        // pickle.dumps(collections.OrderedDict(a=(1, -2, 300, 70000)), protocol=2), hand-assembled.
        let mut p = vec![0x80, 2, b'c'];
        p.extend_from_slice(b"collections\nOrderedDict\n");
        p.extend_from_slice(&[b'q', 0, b')', b'R', b'q', 1, b'(', b'X', 1, 0, 0, 0, b'a', b'q', 2]);
        p.extend_from_slice(&[b'(', b'K', 1, b'J']);
        p.extend_from_slice(&(-2i32).to_le_bytes());
        p.extend_from_slice(&[b'M', 0x2c, 0x01, 0x8a, 3, 0x70, 0x11, 0x01, b't', b'u', b'.']);
        let v = parse(&p).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![(
                Value::Str("a".into()),
                Value::Tuple(vec![Value::Int(1), Value::Int(-2), Value::Int(300), Value::Int(70000)])
            )])
        );
    }

    #[test]
    fn truncated_and_garbage_are_errors_not_panics() {
        assert!(matches!(parse(&[0x80, 2, b'X', 10, 0, 0, 0, b'a']), Err(PickleError::Truncated(_))));
        assert!(matches!(parse(&[0xff]), Err(PickleError::UnsupportedOpcode { op: 0xff, .. })));
        assert!(parse(b"t").is_err());
        assert!(parse(&[b'h', 9]).is_err());
        assert!(parse(&[]).is_err());
    }
}
