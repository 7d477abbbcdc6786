//! Reading and writing NumPy `.npy` files (format versions 1.0 to 3.0,
//! little-endian, C order), the format in which job outputs travel and are
//! stored, so a numpy user can `np.load` any of them.
//!
//! The reader checks everything before trusting a header (dtype, shape,
//! length arithmetic), because uploads come over the network.

use std::io::Write;
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";
/// Largest header we accept (numpy itself writes a few hundred bytes).
const MAX_HEADER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
    I64,
    I32,
    U8,
}

impl Dtype {
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
            Dtype::I64 => "<i8",
            Dtype::I32 => "<i4",
            Dtype::U8 => "|u1",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::U8 => 1,
        }
    }

    fn from_descr(d: &str) -> Option<Dtype> {
        Some(match d {
            "<f4" => Dtype::F32,
            "<f8" => Dtype::F64,
            "<i8" => Dtype::I64,
            "<i4" => Dtype::I32,
            "|u1" | "<u1" => Dtype::U8,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file (bad magic bytes)")]
    BadMagic,
    #[error("unsupported .npy version {0}.{1}")]
    Version(u8, u8),
    #[error("truncated .npy file: {0}")]
    Truncated(&'static str),
    #[error(".npy header: {0}")]
    Header(String),
    #[error("unsupported dtype `{0}` (expected <f4, <f8, <i8, <i4 or |u1)")]
    Dtype(String),
    #[error("fortran-order arrays are not supported")]
    FortranOrder,
    #[error("shape {shape:?} of {dtype} needs {expected} data bytes, the file has {actual}")]
    Length {
        shape: Vec<usize>,
        dtype: &'static str,
        expected: u128,
        actual: usize,
    },
}

/// A decoded array: dtype, shape and the raw little-endian data.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl NpyArray {
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        NpyArray {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Self {
        NpyArray {
            dtype: Dtype::I64,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values as f32 (for F32; F64 is narrowed). `None` for integer dtypes.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self.dtype {
            Dtype::F32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            Dtype::F64 => Some(
                self.data
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Values as i64 (for I64 and I32). `None` for float dtypes.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        match self.dtype {
            Dtype::I64 => Some(
                self.data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            Dtype::I32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            Dtype::U8 => Some(self.data.iter().map(|&b| b as i64).collect()),
            _ => None,
        }
    }

    /// Encodes as a version 1.0 `.npy` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
            self.dtype.descr(),
            shape
        );
        // Pad so the data starts at a multiple of 64 bytes, ending in '\n'.
        let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + header.len() + self.data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Writes atomically: a temporary file in the same directory, fsync, rename.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    pub fn read(path: &Path) -> Result<NpyArray, ReadError> {
        let bytes = std::fs::read(path).map_err(ReadError::Io)?;
        parse(&bytes).map_err(ReadError::Npy)
    }
}

/// Error of [`NpyArray::read`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(std::io::Error),
    #[error(transparent)]
    Npy(NpyError),
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, fsync and a rename, so a reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Parses only the header: (dtype, shape, offset of the data).
pub fn parse_header(bytes: &[u8]) -> Result<(Dtype, Vec<usize>, usize), NpyError> {
    if bytes.len() < 10 {
        return Err(NpyError::Truncated(
            "shorter than the magic and header length",
        ));
    }
    if &bytes[..6] != MAGIC {
        return Err(NpyError::BadMagic);
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(NpyError::Truncated("header length"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => return Err(NpyError::Version(major, minor)),
    };
    if header_len > MAX_HEADER {
        return Err(NpyError::Header(format!(
            "header of {header_len} bytes is larger than {MAX_HEADER}"
        )));
    }
    let end = start + header_len;
    if bytes.len() < end {
        return Err(NpyError::Truncated("header"));
    }
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| NpyError::Header("not valid text".into()))?;
    let descr = dict_value(header, "descr")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    let dtype = Dtype::from_descr(descr).ok_or_else(|| NpyError::Dtype(descr.to_string()))?;
    let fortran = dict_value(header, "fortran_order")?;
    if fortran.trim() != "False" {
        return Err(NpyError::FortranOrder);
    }
    let shape_text = dict_value(header, "shape")?;
    let shape_text = shape_text.trim();
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| NpyError::Header(format!("shape `{shape_text}` is not a tuple")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| NpyError::Header(format!("bad dimension `{s}` in shape")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dtype, shape, end))
}

/// The text of `key`'s value in a Python dict literal (values here never
/// contain a top-level comma except inside the shape tuple).
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let missing = || NpyError::Header(format!("no `{key}` in header"));
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))
        .ok_or_else(missing)?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':').ok_or_else(missing)?;
    let rest = rest.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .ok_or_else(missing)?;
    Ok(&rest[..end])
}

/// Parses a whole `.npy` file and checks that the data matches the header.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    let (dtype, shape, offset) = parse_header(bytes)?;
    let expected = shape.iter().fold(dtype.size() as u128, |acc, &d| {
        acc.saturating_mul(d as u128)
    });
    let actual = bytes.len() - offset;
    if expected != actual as u128 {
        return Err(NpyError::Length {
            shape,
            dtype: dtype.descr(),
            expected,
            actual,
        });
    }
    Ok(NpyArray {
        dtype,
        shape,
        data: bytes[offset..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_f32_and_i64() {
        let a = NpyArray::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let bytes = a.to_bytes();
        assert_eq!((bytes.len() - 48) % 4, 0);
        let b = parse(&bytes).unwrap();
        assert_eq!(b, a);
        assert_eq!(b.to_f32().unwrap()[5], 6.5);
        let i = NpyArray::from_i64(vec![3], &[7, -1, 9]);
        let j = parse(&i.to_bytes()).unwrap();
        assert_eq!(j.shape, vec![3]);
        assert_eq!(j.to_i64().unwrap(), vec![7, -1, 9]);
    }

    #[test]
    fn header_is_64_byte_aligned() {
        let bytes = NpyArray::from_f32(vec![1], &[0.0]).to_bytes();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes[10 + header_len - 1], b'\n');
    }

    #[test]
    fn rejects_lies_in_the_header() {
        let mut bytes = NpyArray::from_f32(vec![2, 2], &[0.0; 4]).to_bytes();
        bytes.truncate(bytes.len() - 4);
        assert!(matches!(parse(&bytes), Err(NpyError::Length { .. })));
        // A header claiming 10^9 x 500 floats is rejected by arithmetic, not allocation.
        let huge = NpyArray {
            dtype: Dtype::F32,
            shape: vec![1_000_000_000, 500],
            data: vec![],
        };
        let err = parse(&huge.to_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("needs 2000000000000 data bytes"),
            "{err}"
        );
        assert_eq!(parse(b"hello world"), Err(NpyError::BadMagic));
        let mut v = NpyArray::from_f32(vec![1], &[0.0]).to_bytes();
        v[6] = 9;
        assert_eq!(parse(&v), Err(NpyError::Version(9, 0)));
    }

    #[test]
    fn reads_numpy_style_headers() {
        // As numpy 2 writes them (version 1.0, shape with trailing comma).
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }";
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        let padded = format!("{header:<117}\n");
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        bytes.extend_from_slice(&5i64.to_le_bytes());
        bytes.extend_from_slice(&6i64.to_le_bytes());
        let a = parse(&bytes).unwrap();
        assert_eq!(a.to_i64().unwrap(), vec![5, 6]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_headers(pos in 0usize..64, byte in any::<u8>()) {
            let mut bytes = NpyArray::from_f32(vec![2, 3], &[1.0; 6]).to_bytes();
            let p = pos.min(bytes.len() - 1);
            bytes[p] = byte;
            let _ = parse(&bytes);
        }
    }
}
