//! Copy buffers, pooled per thread: a tunnel direction (or a TLS link's send queue) takes one while
//! data flows and gives it back whenever it runs dry, so idle tunnels hold no buffer and busy ones
//! never allocate or re-zero.

/// Size of one pooled buffer: four full TLS records of plaintext, with room for their headers and
/// tags once sealed.
pub(crate) const SIZE: usize = 4 * (16 * 1024 + 64) + 1024;

/// Most buffers kept per thread.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: std::cell::RefCell<Vec<Box<[u8]>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes `data[start..end]` waiting in a buffer that is taken from the pool only while it holds
/// something (or is being filled).
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    data: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// A buffer that starts out holding `bytes` (which may be larger than a pooled one).
    pub(crate) fn holding(bytes: Vec<u8>) -> Self {
        let mut this = Self::default();
        if bytes.is_empty() {
            return this;
        }
        let end = bytes.len();
        let data = if end <= SIZE {
            let mut data = take();
            data[..end].copy_from_slice(&bytes);
            data
        } else {
            // A large first flight (e.g. a handshake followed by records): keep it as it came, with
            // room behind it for one more read.
            let mut bytes = bytes;
            bytes.resize(end + SIZE, 0);
            bytes.into_boxed_slice()
        };
        this.data = Some(data);
        this.end = end;
        this
    }

    /// The bytes held.
    pub(crate) fn filled(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[self.start..self.end],
            None => &[],
        }
    }

    /// The bytes held, to be worked on in place.
    pub(crate) fn filled_mut(&mut self) -> &mut [u8] {
        match &mut self.data {
            Some(d) => &mut d[self.start..self.end],
            None => &mut [],
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The free space behind the bytes held (taking a buffer from the pool if none is held); what
    /// is held is moved to the front first when that makes room.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        let data = self.data.get_or_insert_with(take);
        if self.start > 0 {
            data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut data[self.end..]
    }

    /// `n` bytes were written into [`Buffer::spare`].
    pub(crate) fn filled_by(&mut self, n: usize) {
        self.end += n;
    }

    /// The first `n` bytes held are used up; an emptied buffer goes back to the pool.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
            self.release();
        }
    }

    /// Gives an empty buffer back to the pool.
    pub(crate) fn release(&mut self) {
        if self.start != self.end {
            return;
        }
        if let Some(data) = self.data.take() {
            if data.len() == SIZE {
                POOL.with(|p| {
                    let mut pool = p.borrow_mut();
                    if pool.len() < POOL_MAX {
                        pool.push(data);
                    }
                });
            }
        }
    }
}

fn take() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| vec![0u8; SIZE].into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_flight_larger_than_a_buffer_is_kept_whole_with_room_for_more() {
        let mut b = Buffer::holding(vec![7u8; SIZE + 100]);
        assert_eq!(b.filled().len(), SIZE + 100);
        assert!(b.spare().len() >= SIZE);
        b.consume(SIZE + 100);
        assert!(b.is_empty());
    }

    #[test]
    fn consumed_bytes_make_room_at_the_front() {
        let mut b = Buffer::default();
        let n = b.spare().len();
        b.filled_by(n);
        assert!(b.spare().is_empty());
        b.consume(10);
        assert_eq!(b.spare().len(), 10);
        assert_eq!(b.filled().len(), n - 10);
    }
}
