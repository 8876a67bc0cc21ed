//! One segment file: the record header, buffered positional reads, decoding, the resync
//! scan, the header walk, the magic check and the directory listing. No queue state.

use super::*;

/// The fixed part of a record.
pub(super) struct Header {
    pub(super) len: usize,
    pub(super) crc: u32,
    pub(super) seq: u64,
    pub(super) accepted_us: u64,
}

impl Header {
    pub(super) fn parse(b: &[u8]) -> Header {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Header {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: word(8),
            accepted_us: word(16),
        }
    }
}

/// Buffered positional reads from one segment file.
pub(super) struct SegReader {
    pub(super) first_seq: u64,
    pub(super) file: Arc<dyn FsFile>,
    /// Only grows (zero-filled once), so refills do not clear it again.
    pub(super) buf: Vec<u8>,
    /// Bytes of `buf` read from the file.
    pub(super) filled: usize,
    /// File offset of `buf[0]`.
    pub(super) at: u64,
}

impl SegReader {
    pub(super) fn open(fs: &dyn Filesystem, path: &Path, first_seq: u64) -> io::Result<SegReader> {
        Ok(SegReader {
            first_seq,
            file: fs.open_read(path)?,
            buf: Vec::new(),
            filled: 0,
            at: 0,
        })
    }

    /// `len` bytes at `off`, or None when they would reach past `end` or the file's end.
    pub(super) fn get(&mut self, off: u64, len: usize, end: u64) -> io::Result<Option<&[u8]>> {
        if off + len as u64 > end {
            return Ok(None);
        }
        let have = off >= self.at && off + len as u64 <= self.at + self.filled as u64;
        if !have {
            let want = ((end - off) as usize).min(READ_CHUNK.max(len));
            if self.buf.len() < want {
                self.buf.resize(want, 0);
            }
            let mut got = 0;
            while got < want {
                match self
                    .file
                    .read_at(&mut self.buf[got..want], off + got as u64)
                {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.filled = 0;
                        return Err(e);
                    }
                }
            }
            self.filled = got;
            self.at = off;
            if got < len {
                return Ok(None);
            }
        }
        let s = (off - self.at) as usize;
        Ok(Some(&self.buf[s..s + len]))
    }
}

pub(super) enum Decoded {
    Record(Record, usize),
    /// The record (or its header) reaches past the end.
    Truncated,
    Bad,
}

pub(super) fn decode_at(
    r: &mut SegReader,
    off: u64,
    expect_seq: u64,
    end: u64,
) -> io::Result<Decoded> {
    let Some(h) = r.get(off, HEADER_LEN, end)? else {
        return Ok(Decoded::Truncated);
    };
    let hdr = Header::parse(h);
    if hdr.len > MAX_RECORD_BYTES || hdr.seq != expect_seq {
        return Ok(Decoded::Bad);
    }
    let Some(buf) = r.get(off, HEADER_LEN + hdr.len, end)? else {
        return Ok(Decoded::Truncated);
    };
    let mut c = crc32c::crc32c(&buf[0..4]);
    c = crc32c::crc32c_append(c, &buf[8..]);
    if c != hdr.crc {
        return Ok(Decoded::Bad);
    }
    Ok(Decoded::Record(
        Record {
            seq: hdr.seq,
            accepted_us: hdr.accepted_us,
            payload: buf[HEADER_LEN..].to_vec(),
        },
        HEADER_LEN + hdr.len,
    ))
}

/// Finds the first offset in `from..end` holding an intact record whose sequence number is in
/// `min_seq..max_seq`: where reading resumes after a corrupt record.
pub(super) fn resync(
    r: &mut SegReader,
    from: u64,
    end: u64,
    min_seq: u64,
    max_seq: u64,
) -> io::Result<Option<(u64, u64)>> {
    let mut off = from;
    while off + HEADER_LEN as u64 <= end {
        let Some(h) = r.get(off, HEADER_LEN, end)? else {
            break;
        };
        let hdr = Header::parse(h);
        if hdr.seq >= min_seq && hdr.seq < max_seq && hdr.len <= MAX_RECORD_BYTES {
            if let Decoded::Record(..) = decode_at(r, off, hdr.seq, end)? {
                return Ok(Some((off, hdr.seq)));
            }
        }
        off += 1;
    }
    Ok(None)
}

/// What a full scan of one segment found.
pub(super) struct Scan {
    pub(super) file_bytes: u64,
    /// End of the last intact record.
    pub(super) valid_bytes: u64,
    pub(super) next_seq: u64,
    /// Unreadable sequence ranges followed by intact records.
    pub(super) holes: Vec<(u64, u64)>,
}

/// Reads a whole segment (magic already checked), CRC-checking every record, skipping corrupt
/// ones (resync) and finding where the intact records end. `visit` sees every intact record.
pub(super) fn scan_segment(
    fs: &dyn Filesystem,
    path: &Path,
    first_seq: u64,
    mut visit: Option<&mut dyn FnMut(Record)>,
) -> io::Result<Scan> {
    let mut r = SegReader::open(fs, path, first_seq)?;
    let file_bytes = r.file.len()?;
    let (mut off, mut seq) = (MAGIC_LEN, first_seq);
    let mut valid_bytes = MAGIC_LEN.min(file_bytes);
    let mut holes = Vec::new();
    loop {
        match decode_at(&mut r, off, seq, file_bytes)? {
            Decoded::Record(rec, used) => {
                if let Some(v) = visit.as_mut() {
                    v(rec);
                }
                off += used as u64;
                seq += 1;
                valid_bytes = off;
            }
            Decoded::Truncated if off >= file_bytes => break,
            _ => {
                // Every record needs at least a header: an upper bound for the resync.
                let max_seq = seq + 1 + (file_bytes - off) / HEADER_LEN as u64;
                match resync(&mut r, off + 1, file_bytes, seq + 1, max_seq)? {
                    Some((o, s)) => {
                        holes.push((seq, s));
                        off = o;
                        seq = s;
                    }
                    None => break, // a torn tail
                }
            }
        }
    }
    Ok(Scan {
        file_bytes,
        valid_bytes,
        next_seq: seq,
        holes,
    })
}

/// An I/O error that a retry may not meet again (a failing card, a permission being fixed).
pub(super) fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(5 | 16)) // EIO, EBUSY
}

/// The seq after the last record of a segment of `bytes` bytes, found by reading only the
/// record headers; None when a header is not the one expected or a record does not end
/// exactly at the file's end (torn or corrupt: the reader finds and counts it).
pub(super) fn walk_headers(
    fs: &dyn Filesystem,
    path: &Path,
    first_seq: u64,
    bytes: u64,
) -> io::Result<Option<u64>> {
    let f = fs.open_read(path)?;
    let (mut off, mut seq) = (MAGIC_LEN, first_seq);
    let mut h = [0u8; HEADER_LEN];
    while off < bytes {
        if off + HEADER_LEN as u64 > bytes {
            return Ok(None);
        }
        read_exact_at(&*f, &mut h, off)?;
        let hdr = Header::parse(&h);
        if hdr.seq != seq || hdr.len > MAX_RECORD_BYTES {
            return Ok(None);
        }
        off += (HEADER_LEN + hdr.len) as u64;
        seq += 1;
    }
    Ok((off == bytes).then_some(seq))
}

pub(super) fn segment_magic_ok(fs: &dyn Filesystem, path: &Path) -> io::Result<bool> {
    let f = fs.open_read(path)?;
    let mut m = [0u8; SEGMENT_MAGIC.len()];
    match read_exact_at(&*f, &mut m, 0) {
        Ok(()) => Ok(&m == SEGMENT_MAGIC),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// First sequence numbers of the `*.seg` files in `dir`, sorted.
pub(super) fn list_segments(fs: &dyn Filesystem, dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts: Vec<u64> = Vec::new();
    for name in fs.list_dir(dir)? {
        if let Some(num) = name.strip_suffix(".seg") {
            if let Ok(n) = num.parse::<u64>() {
                firsts.push(n);
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// `read_exact_at` through the seam.
pub(super) fn read_exact_at(f: &dyn FsFile, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, off) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
