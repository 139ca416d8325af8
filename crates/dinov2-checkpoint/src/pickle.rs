//! A restricted reader of Python pickles, enough for the `data.pkl` of a `torch.save` file
//! (protocol 2; protocol 0 text strings are taken without their escapes).
//!
//! Nothing is ever called or imported: a pickle's globals are only names. The handful that build a
//! state dict (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter`) are understood; every other object (an `argparse.Namespace`
//! of training options, a numpy scalar) becomes [`Value::Object`], kept by its class name only.
//! So a checkpoint cannot run code here, as it can under `torch.load(weights_only=False)`.

use std::collections::HashMap;

/// A value of the pickle, as far as a checkpoint reader needs it.
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
    /// A dict or `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A global named by the pickle (`module.name`), never imported.
    Global(String),
    /// A storage of the file (`persistent_load`): its record name and element type (`FloatStorage`).
    Storage {
        key: String,
        kind: String,
    },
    /// A tensor over a storage.
    Tensor(TensorSpec),
    /// Any other object, by the class or function that builds it.
    Object(String),
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// The storage's record name (`data/KEY` in the archive).
    pub key: String,
    /// The storage's class name, e.g. `FloatStorage`.
    pub kind: String,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements.
    pub stride: Vec<usize>,
}

/// Why a pickle could not be read: the byte offset and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    pub offset: usize,
    pub reason: String,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

/// Reads the one pickled value of `data`.
pub fn load(data: &[u8]) -> Result<Value, PickleError> {
    Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copied: 0,
    }
    .run()
}

/// Containers nested deeper than this are refused: a state dict nests a few levels, and the
/// values are dropped and compared recursively.
const MAX_DEPTH: u32 = 1000;

/// Values copied through the memo (and `DUP`) beyond this many are refused. Python shares a
/// memoized object; here it is copied, so a pickle that fetches a container into itself over
/// and over would otherwise grow without bound.
const MAX_COPIED: u64 = 1 << 22;

/// A value with the depth of its nesting (0 for a scalar) and its number of values, itself
/// included: what the limits above are checked against.
#[derive(Debug, Clone)]
struct Item {
    value: Value,
    depth: u32,
    size: u64,
}

impl Item {
    fn leaf(value: Value) -> Self {
        Item {
            value,
            depth: 0,
            size: 1,
        }
    }

    /// A container of `items`, made by `make`.
    fn of(items: Vec<Item>, make: impl FnOnce(Vec<Value>) -> Value) -> Step<Self> {
        let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("values nested more than {MAX_DEPTH} deep"));
        }
        let size = 1 + items.iter().map(|i| i.size).sum::<u64>();
        Ok(Item {
            value: make(items.into_iter().map(|i| i.value).collect()),
            depth,
            size,
        })
    }

    /// Takes in the depth and size of `items` put inside this container.
    fn grow(&mut self, items: &[Item]) -> Step<()> {
        let inner = items.iter().map(|i| i.depth + 1).max().unwrap_or(0);
        self.depth = self.depth.max(inner);
        if self.depth > MAX_DEPTH {
            return Err(format!("values nested more than {MAX_DEPTH} deep"));
        }
        self.size += items.iter().map(|i| i.size).sum::<u64>();
        Ok(())
    }
}

/// The pickle machine: its input, its stack of values, the open marks and the memo.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    /// Stack lengths at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u64, Item>,
    /// Values copied into or out of the memo so far.
    copied: u64,
}

type Step<T> = Result<T, String>;

impl Machine<'_> {
    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = match self.take(1) {
                Ok(b) => b[0],
                Err(reason) => return Err(PickleError { offset: at, reason }),
            };
            match self.step(op) {
                Ok(true) => {
                    return self
                        .pop()
                        .map(|item| item.value)
                        .map_err(|reason| PickleError { offset: at, reason });
                }
                Ok(false) => {}
                Err(reason) => return Err(PickleError { offset: at, reason }),
            }
        }
    }

    /// Executes one opcode; true at `STOP`.
    fn step(&mut self, op: u8) -> Step<bool> {
        match op {
            b'.' => return Ok(true),
            0x80 => {
                let proto = self.take(1)?[0];
                if proto > 5 {
                    return Err(format!("pickle protocol {proto} is newer than 5"));
                }
            }
            0x95 => {
                self.take(8)?; // FRAME: a length hint.
            }
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                // POP takes the mark itself where nothing is above it, as CPython does.
                if self.marks.last() == Some(&self.stack.len()) {
                    self.marks.pop();
                } else {
                    self.pop()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let size = self.top()?.size;
                self.count(size)?;
                let top = self.top()?.clone();
                self.stack.push(top);
            }
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()));
            }
            b'K' => {
                let v = self.take(1)?[0];
                self.push(Value::Int(v.into()));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()));
            }
            0x8a => {
                let n = self.take(1)?[0] as usize;
                let v = self.long(n)?;
                self.push(v);
            }
            0x8b => {
                let n = u32::from_le_bytes(self.array()?) as usize;
                let v = self.long(n)?;
                self.push(v);
            }
            b'I' | b'L' => {
                let line = self.line()?;
                let text = line.trim_end_matches('L');
                let v = match text {
                    "00" if op == b'I' => Value::Bool(false),
                    "01" if op == b'I' => Value::Bool(true),
                    _ => Value::Int(text.parse().map_err(|_| format!("bad integer {text:?}"))?),
                };
                self.push(v);
            }
            b'G' => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Value::Float(v));
            }
            b'F' => {
                let line = self.line()?;
                let v = line.parse().map_err(|_| format!("bad float {line:?}"))?;
                self.push(Value::Float(v));
            }
            b'X' => {
                let n = u32::from_le_bytes(self.array()?) as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            0x8c => {
                let n = self.take(1)?[0] as usize;
                let v = self.utf8(n)?;
                self.push(v);
            }
            0x8d => {
                let n = self.len64()?;
                let v = self.utf8(n)?;
                self.push(v);
            }
            b'T' => {
                let n = u32::from_le_bytes(self.array()?) as usize;
                let v = self.latin1(n)?;
                self.push(v);
            }
            b'U' => {
                let n = self.take(1)?[0] as usize;
                let v = self.latin1(n)?;
                self.push(v);
            }
            b'B' => {
                let n = u32::from_le_bytes(self.array()?) as usize;
                let v = self.take(n)?.to_vec();
                self.push(Value::Bytes(v));
            }
            b'C' => {
                let n = self.take(1)?[0] as usize;
                let v = self.take(n)?.to_vec();
                self.push(Value::Bytes(v));
            }
            0x8e => {
                let n = self.len64()?;
                let v = self.take(n)?.to_vec();
                self.push(Value::Bytes(v));
            }
            b'V' => {
                let line = self.line()?;
                self.push(Value::Str(line));
            }
            b')' => self.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Item::of(items, Value::Tuple)?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let items = self.pop_n(n)?;
                self.stack.push(Item::of(items, Value::Tuple)?);
            }
            b']' => self.push(Value::List(Vec::new())),
            b'l' => {
                let items = self.pop_mark()?;
                self.stack.push(Item::of(items, Value::List)?);
            }
            b'a' => {
                let item = self.pop()?;
                self.extend(vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.extend(items)?;
            }
            b'}' => self.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = self.pop_mark()?;
                self.push(Value::Dict(Vec::new()));
                self.set_items(items)?;
            }
            b's' => {
                let items = self.pop_n(2)?;
                self.set_items(items)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            0x8f => self.push(Value::List(Vec::new())),
            0x90 => {
                let items = self.pop_mark()?;
                self.extend(items)?;
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.stack.push(Item::of(items, Value::List)?);
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(Value::Global(format!("{module}.{name}")));
            }
            0x93 => {
                let name = self.pop()?.value;
                let module = self.pop()?.value;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?.value;
                let item = Item {
                    value: reduce(callable, args.value)?,
                    depth: args.depth,
                    size: args.size + 1,
                };
                self.stack.push(item);
            }
            0x81 => {
                let _args = self.pop()?;
                let class = self.pop()?.value;
                self.push(Value::Object(class_name(&class)));
            }
            0x92 => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let class = self.pop()?.value;
                self.push(Value::Object(class_name(&class)));
            }
            b'b' => {
                // BUILD sets an object's state; no object here has state we read.
                self.pop()?;
                self.top()?;
            }
            b'Q' => {
                let pid = self.pop()?.value;
                let v = storage(pid)?;
                self.push(v);
            }
            b'P' => return Err("text persistent ids (protocol 0) are not torch's".into()),
            b'q' => {
                let i = self.take(1)?[0] as u64;
                self.put(i)?;
            }
            b'r' => {
                let i = u32::from_le_bytes(self.array()?) as u64;
                self.put(i)?;
            }
            b'p' => {
                let line = self.line()?;
                let i = line
                    .parse()
                    .map_err(|_| format!("bad memo index {line:?}"))?;
                self.put(i)?;
            }
            0x94 => {
                let i = self.memo.len() as u64;
                self.put(i)?;
            }
            b'h' => {
                let i = self.take(1)?[0] as u64;
                self.get(i)?;
            }
            b'j' => {
                let i = u32::from_le_bytes(self.array()?) as u64;
                self.get(i)?;
            }
            b'g' => {
                let line = self.line()?;
                let i = line
                    .parse()
                    .map_err(|_| format!("bad memo index {line:?}"))?;
                self.get(i)?;
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
        }
        Ok(false)
    }

    fn take(&mut self, n: usize) -> Step<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| "the pickle ends early (truncated file?)".to_owned())?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len64(&mut self) -> Step<usize> {
        usize::try_from(u64::from_le_bytes(self.array()?)).map_err(|_| "length too large".into())
    }

    /// A newline-terminated text argument (protocol 0 opcodes, GLOBAL).
    fn line(&mut self) -> Step<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| "the pickle ends inside a line".to_owned())?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn utf8(&mut self, n: usize) -> Step<Value> {
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| "a string is not UTF-8".to_owned())?;
        Ok(Value::Str(s.to_owned()))
    }

    /// Python 2 strings, as numpy writes some names: bytes taken as Latin-1.
    fn latin1(&mut self, n: usize) -> Step<Value> {
        Ok(Value::Str(
            self.take(n)?.iter().map(|&b| b as char).collect(),
        ))
    }

    /// A little-endian two's-complement integer of `n` bytes.
    fn long(&mut self, n: usize) -> Step<Value> {
        let bytes = self.take(n)?;
        if n > 8 {
            return Ok(Value::Object("int (more than 64 bits)".into()));
        }
        let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
            [0xff; 8]
        } else {
            [0; 8]
        };
        buf[..n].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    /// Pushes a scalar (or an empty container).
    fn push(&mut self, value: Value) {
        self.stack.push(Item::leaf(value));
    }

    fn pop(&mut self) -> Step<Item> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pop past a mark".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pop from an empty stack".into())
    }

    fn pop_n(&mut self, n: usize) -> Step<Vec<Item>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return Err("the stack is too short".into());
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn pop_mark(&mut self) -> Step<Vec<Item>> {
        let mark = self.marks.pop().ok_or("no mark to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Step<&mut Item> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("no value above the mark".into());
        }
        self.stack.last_mut().ok_or_else(|| "empty stack".into())
    }

    fn extend(&mut self, items: Vec<Item>) -> Step<()> {
        let top = self.top()?;
        top.grow(&items)?;
        match &mut top.value {
            Value::List(list) => list.extend(items.into_iter().map(|i| i.value)),
            // Appending to an object we do not model (a set, a custom list): keep the object.
            Value::Object(_) => {}
            other => return Err(format!("APPEND to a {}", kind(other))),
        }
        Ok(())
    }

    /// `SETITEM(S)`: `items` are keys and values in turn.
    fn set_items(&mut self, items: Vec<Item>) -> Step<()> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of dict items".into());
        }
        let top = self.top()?;
        top.grow(&items)?;
        match &mut top.value {
            Value::Dict(dict) => {
                // Keys are kept as they come: a key given twice (which torch never writes)
                // reads as two tensors of one name, an error naming it.
                let mut it = items.into_iter().map(|i| i.value);
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.push((k, v));
                }
            }
            Value::Object(_) => {}
            other => return Err(format!("SETITEM on a {}", kind(other))),
        }
        Ok(())
    }

    /// Counts a copy of `size` values against [`MAX_COPIED`], before it is made.
    fn count(&mut self, size: u64) -> Step<()> {
        self.copied += size;
        if self.copied > MAX_COPIED {
            return Err(format!(
                "more than {MAX_COPIED} values copied through the memo: not a checkpoint"
            ));
        }
        Ok(())
    }

    /// Memoizes the top of the stack. The copy is a snapshot: a container changed after it is
    /// memoized and fetched again reads as it was (torch's state dicts do not do that).
    fn put(&mut self, index: u64) -> Step<()> {
        let size = self.top()?.size;
        self.count(size)?;
        let item = self.top()?.clone();
        self.memo.insert(index, item);
        Ok(())
    }

    fn get(&mut self, index: u64) -> Step<()> {
        let size = self
            .memo
            .get(&index)
            .map(|i| i.size)
            .ok_or_else(|| format!("memo entry {index} was never stored"))?;
        self.count(size)?;
        self.stack.push(self.memo[&index].clone());
        Ok(())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage { .. } => "storage",
        Value::Tensor(_) => "tensor",
        Value::Object(_) => "object",
    }
}

fn class_name(v: &Value) -> String {
    match v {
        Value::Global(name) => name.clone(),
        other => kind(other).to_owned(),
    }
}

/// `callable(*args)` for the callables a state dict uses; any other gives an opaque object.
fn reduce(callable: Value, args: Value) -> Step<Value> {
    let name = class_name(&callable);
    let Value::Tuple(args) = args else {
        return Ok(Value::Object(name));
    };
    match name.as_str() {
        "collections.OrderedDict" => match args.into_iter().next() {
            None => Ok(Value::Dict(Vec::new())),
            Some(Value::List(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::Tuple(kv) if kv.len() == 2 => {
                            let mut kv = kv.into_iter();
                            out.push((
                                kv.next().unwrap_or(Value::None),
                                kv.next().unwrap_or(Value::None),
                            ));
                        }
                        _ => return Err("OrderedDict of non-pairs".into()),
                    }
                }
                Ok(Value::Dict(out))
            }
            Some(_) => Ok(Value::Object(name)),
        },
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
            rebuild_tensor(args).map(Value::Tensor)
        }
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(format!("{name} without a tensor")),
            }
        }
        _ => Ok(Value::Object(name)),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn rebuild_tensor(args: Vec<Value>) -> Step<TensorSpec> {
    let mut it = args.into_iter();
    let (Some(storage), Some(offset), Some(size), Some(stride)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err("_rebuild_tensor_v2 with fewer than 4 arguments".into());
    };
    let Value::Storage { key, kind } = storage else {
        return Err("_rebuild_tensor_v2 of something other than a storage".into());
    };
    let offset = non_negative(&offset)?;
    let dims = |v: Value| -> Step<Vec<usize>> {
        match v {
            Value::Tuple(items) | Value::List(items) => items.iter().map(non_negative).collect(),
            Value::Object(o) if o == "torch.Size" => Err("torch.Size without dims".into()),
            _ => Err("tensor sizes are not a tuple".into()),
        }
    };
    Ok(TensorSpec {
        key,
        kind,
        offset,
        shape: dims(size)?,
        stride: dims(stride)?,
    })
}

fn non_negative(v: &Value) -> Step<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        Value::Int(i) => Err(format!("a tensor size or offset of {i}")),
        _ => Err(format!("a tensor size or offset that is a {}", kind(v))),
    }
}

/// torch's persistent id `('storage', StorageType, key, location, numel)`.
fn storage(pid: Value) -> Step<Value> {
    let Value::Tuple(items) = pid else {
        return Err("a persistent id that is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(tag), storage_type, Value::Str(key), ..] if tag == "storage" => {
            let kind = match storage_type {
                // `torch.FloatStorage`, ...; newer files may name `torch.storage.UntypedStorage`.
                Value::Global(name) => name.rsplit('.').next().unwrap_or(name).to_owned(),
                _ => return Err("a storage type that is not a class name".into()),
            };
            Ok(Value::Storage {
                key: key.clone(),
                kind,
            })
        }
        _ => Err("a persistent id other than a torch storage".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_2_state_dict() {
        // pickle.dumps({'a': 1, 'b': [2.5, None, True], 'c': 'x' * 3}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00cq\x04X\x03\x00\x00\x00xxxq\x05u.";
        let v = load(data).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Float(2.5), Value::None, Value::Bool(true)])
                ),
                (Value::Str("c".into()), Value::Str("xxx".into())),
            ])
        );
    }

    #[test]
    fn rebuilds_a_tensor_and_keeps_other_objects_opaque() {
        // A hand-written torch-style pickle: {'w': _rebuild_tensor_v2(pid, 2, (2, 3), (3, 1),
        // False, OrderedDict()), 'args': argparse.Namespace()} with a BUILD on the namespace.
        let mut p: Vec<u8> =
            b"\x80\x02}q\x00(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n".to_vec();
        p.extend_from_slice(b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x08tQ");
        p.extend_from_slice(
            b"K\x02K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)Rtq\x01R",
        );
        p.extend_from_slice(
            b"X\x04\x00\x00\x00argscargparse\nNamespace\n)R}X\x01\x00\x00\x00xK\x01sbu.",
        );
        let v = load(&p).unwrap();
        let Value::Dict(items) = v else { panic!() };
        assert_eq!(
            items[0].1,
            Value::Tensor(TensorSpec {
                key: "0".into(),
                kind: "FloatStorage".into(),
                offset: 2,
                shape: vec![2, 3],
                stride: vec![3, 1],
            })
        );
        assert_eq!(items[1].1, Value::Object("argparse.Namespace".into()));
    }

    #[test]
    fn deep_nesting_and_memo_blow_up_are_refused() {
        // [[[[...]]]] 2000 deep: an error, not a stack overflow when the value is dropped.
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', 2000));
        p.extend(std::iter::repeat_n(b'a', 1999));
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.reason.contains("nested more than 1000"), "{e}");
        // x = []; then 64 times x = (x, x) through the memo: 2^64 values if copied out.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..64 {
            p.extend(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        let e = load(&p).unwrap_err();
        assert!(e.reason.contains("copied through the memo"), "{e}");
    }

    #[test]
    fn errors_name_the_offset() {
        let e = load(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").unwrap_err();
        assert!(e.reason.contains("ends early"), "{e}");
        let e = load(b"\x80\x02\xff").unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.reason.contains("0xff"));
        assert!(load(b"\x80\x02e.").is_err());
        assert!(load(b"").is_err());
    }
}
