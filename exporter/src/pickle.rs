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
}

/// Parse one pickle stream up to its STOP opcode.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
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
    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| self.malformed_at(self.pos, "stack underflow"))
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let pos = self.pos;
        self.stack.last_mut().ok_or(PickleError::Malformed { pos, problem: "stack underflow".into() })
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed_at(self.pos, "no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed_at(self.pos, "MARK above the stack"));
        }
        Ok(self.stack.split_off(mark))
    }
    fn memo_get(&self, key: u32) -> Result<Value, PickleError> {
        self.memo.get(&key).cloned().ok_or_else(|| self.malformed_at(self.pos, &format!("memo key {key} unset")))
    }
    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let value = self.stack.last().cloned().ok_or_else(|| self.malformed_at(self.pos, "stack underflow"))?;
        self.memo.insert(key, value);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let pos = self.pos;
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed_at(pos, "odd number of dict items"));
        }
        match self.top()? {
            Value::Dict(entries) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Ok(())
            }
            _ => Err(PickleError::Malformed { pos, problem: "SETITEMS on a non-dict".into() }),
        }
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
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
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
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(s)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name })
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => self.stack.push(Value::Global { module, name }),
                        _ => return Err(self.malformed_at(at, "STACK_GLOBAL needs two strings")),
                    }
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.malformed_at(at, "stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.malformed_at(at, "APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.malformed_at(at, "APPENDS to a non-list")),
                    }
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
                    let v = self.memo_get(k)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let k = self.u32()?;
                    let v = self.memo_get(k)?;
                    self.stack.push(v)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::PersistentId(Box::new(pid)))
                }
                b'R' | 0x81 => {
                    // REDUCE / NEWOBJ: recorded as a call. `OrderedDict()` becomes a dict at once,
                    // so that the SETITEMS that follow can fill it.
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let args = match args {
                        Value::Tuple(a) => a,
                        _ => return Err(self.malformed_at(at, "REDUCE arguments are not a tuple")),
                    };
                    if callable.is_global("collections", "OrderedDict") && args.is_empty() {
                        self.stack.push(Value::Dict(Vec::new()))
                    } else {
                        self.stack.push(Value::Call { callable: Box::new(callable), args })
                    }
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
