//! The job's inputs in order, handed to the decoders a window at a time: images known up front
//! pass straight through; a stream's members are read as the windows ask for them, so that a
//! stream of any length is embedded with a few windows in memory.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::inputs::{Input, Source};
use super::streams::{Context, Members, Stream};

/// A run of consecutive inputs, decoded together.
pub(super) struct Window {
    /// Its place among the job's windows (from 0 for the windows of this run).
    pub seq: usize,
    /// The index of its first input among all the job's inputs.
    pub begin: usize,
    pub inputs: Vec<Input>,
}

/// A source not yet reached, or a stream started ahead of its turn.
enum Pending {
    Image(Input),
    Stream(Stream),
    Started(Members),
}

/// The inputs of the sources, in order. While a stream is read, the next one (when a stream
/// follows it) is started, so that its command's start (a download's) overlaps the reading.
struct Items {
    queue: VecDeque<Pending>,
    current: Option<Members>,
    /// Members read ahead per stream.
    buffer: usize,
    context: Context,
}

impl Iterator for Items {
    type Item = Input;

    fn next(&mut self) -> Option<Input> {
        loop {
            // A stopping job starts no other stream.
            if self.context.cancel.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(current) = &mut self.current {
                match current.next() {
                    Some(input) => return Some(input),
                    None => self.current = None,
                }
            }
            let members = match self.queue.pop_front()? {
                Pending::Image(input) => return Some(input),
                Pending::Stream(stream) => stream.members(self.buffer, self.context.clone()),
                Pending::Started(members) => members,
            };
            self.current = Some(members);
            if let Some(Pending::Stream(_)) = self.queue.front() {
                if let Some(Pending::Stream(next)) = self.queue.pop_front() {
                    let started = next.members(self.buffer, self.context.clone());
                    self.queue.push_front(Pending::Started(started));
                }
            }
        }
    }
}

/// The job's inputs, front to back.
pub(super) struct Feed {
    items: Items,
    /// The index of the next input.
    next: usize,
    /// Windows handed out.
    windows: usize,
    /// Whether the last input has been handed out.
    ended: bool,
}

impl Feed {
    /// The inputs of `sources`, in order; a stream is started when the feed reaches it (or the
    /// stream before it), with up to `buffer` of its members read ahead. Once the context's
    /// cancel flag is set, the feed gives no more (the job is stopping).
    pub fn new(sources: Vec<Source>, buffer: usize, context: Context) -> Self {
        let queue = sources
            .into_iter()
            .map(|source| match source {
                Source::Image(input) => Pending::Image(input),
                Source::Stream(stream) => Pending::Stream(stream),
            })
            .collect();
        Feed {
            items: Items {
                queue,
                current: None,
                buffer,
                context,
            },
            next: 0,
            windows: 0,
            ended: false,
        }
    }

    /// Passes over the first `n` inputs (those an interrupted job has done); the name of the
    /// last, or how many there were when there are fewer.
    pub fn skip(&mut self, n: usize) -> std::result::Result<Option<String>, usize> {
        let mut last = None;
        while self.next < n {
            match self.items.next() {
                Some(input) => last = Some(input.name()),
                None => {
                    self.ended = true;
                    return Err(self.next);
                }
            }
            self.next += 1;
        }
        Ok(last)
    }

    /// The next window of up to `size` inputs; `None` once they are all handed out.
    pub fn window(&mut self, size: usize) -> Option<Window> {
        if self.ended {
            return None;
        }
        let inputs: Vec<Input> = self.items.by_ref().take(size.max(1)).collect();
        if inputs.len() < size.max(1) {
            self.ended = true;
        }
        if inputs.is_empty() {
            return None;
        }
        let window = Window {
            seq: self.windows,
            begin: self.next,
            inputs,
        };
        self.next += window.inputs.len();
        self.windows += 1;
        Some(window)
    }

    /// Whether every input has been handed out, and in how many windows.
    pub fn handed_out(&self) -> (bool, usize) {
        (self.ended, self.windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn files(n: usize) -> Vec<Source> {
        (0..n)
            .map(|i| Source::Image(Input::File(format!("{i}.jpg").into())))
            .collect()
    }

    #[test]
    fn windows_cover_the_inputs_in_order() {
        let context = Context {
            cancel: Arc::new(AtomicBool::new(false)),
            log: Arc::new(|_: &str, _: &str| {}),
        };
        let feed = |n| Feed::new(files(n), 4, context.clone());
        let mut seven = feed(7);
        assert_eq!(seven.skip(2), Ok(Some("1.jpg".into())));
        let mut got = Vec::new();
        while let Some(w) = seven.window(3) {
            got.push((w.seq, w.begin, w.inputs.len()));
        }
        assert_eq!(got, [(0, 2, 3), (1, 5, 2)]);
        assert_eq!(seven.handed_out(), (true, 2));
        // A whole last window: the next asks find nothing.
        let mut four = feed(4);
        assert!(four.window(2).is_some() && four.window(2).is_some());
        assert_eq!(four.handed_out(), (false, 2));
        assert!(four.window(2).is_none());
        assert_eq!(four.handed_out(), (true, 2));
        assert_eq!(feed(3).skip(5), Err(3));
        assert_eq!(feed(3).skip(0), Ok(None));
    }
}
