//! The job's inputs in order, handed to the decoders a window at a time: images known up front
//! pass straight through; a stream's members are read as the windows ask for them, so that a
//! stream of any length is embedded with a few windows in memory.

use super::inputs::{Input, Source};

/// A run of consecutive inputs, decoded together.
pub(super) struct Window {
    /// Its place among the job's windows (from 0 for the windows of this run).
    pub seq: usize,
    /// The index of its first input among all the job's inputs.
    pub begin: usize,
    pub inputs: Vec<Input>,
}

/// The job's inputs, front to back.
pub(super) struct Feed {
    items: Box<dyn Iterator<Item = Input> + Send>,
    /// The index of the next input.
    next: usize,
    /// Windows handed out.
    windows: usize,
    /// Whether the last input has been handed out.
    ended: bool,
}

impl Feed {
    /// The inputs of `sources`, in order; a stream is started when the feed reaches it, with up
    /// to `buffer` of its members read ahead.
    pub fn new(sources: Vec<Source>, buffer: usize) -> Self {
        let items = sources.into_iter().flat_map(move |source| {
            let items: Box<dyn Iterator<Item = Input> + Send> = match source {
                Source::Image(input) => Box::new(std::iter::once(input)),
                Source::Stream(stream) => Box::new(stream.members(buffer).into_iter()),
            };
            items
        });
        Feed {
            items: Box::new(items),
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

    fn files(n: usize) -> Vec<Source> {
        (0..n)
            .map(|i| Source::Image(Input::File(format!("{i}.jpg").into())))
            .collect()
    }

    #[test]
    fn windows_cover_the_inputs_in_order() {
        let mut feed = Feed::new(files(7), 4);
        assert_eq!(feed.skip(2), Ok(Some("1.jpg".into())));
        let mut got = Vec::new();
        while let Some(w) = feed.window(3) {
            got.push((w.seq, w.begin, w.inputs.len()));
        }
        assert_eq!(got, [(0, 2, 3), (1, 5, 2)]);
        assert_eq!(feed.handed_out(), (true, 2));
        // A whole last window: the next asks find nothing.
        let mut feed = Feed::new(files(4), 4);
        assert!(feed.window(2).is_some() && feed.window(2).is_some());
        assert_eq!(feed.handed_out(), (false, 2));
        assert!(feed.window(2).is_none());
        assert_eq!(feed.handed_out(), (true, 2));
        assert_eq!(Feed::new(files(3), 4).skip(5), Err(3));
        assert_eq!(Feed::new(files(3), 4).skip(0), Ok(None));
    }
}
