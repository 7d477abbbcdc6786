//! Prediction files as the team's notebooks write and read them: `.npy`
//! (float32 or float64, shape `[rows, classes]`) and the baseline's CSV (an
//! optional index column, then `class_0` .. `class_{C-1}`). One definition
//! for both directions: `coordinator import` reads these layouts and
//! `coordinator export` writes them.
//!
//! Values are kept as given (logits or probabilities, see
//! [`are_probabilities`]); checks name the file, the row and the column.

use crate::npy::{Dtype, parse};

/// A `[rows, classes]` matrix read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    pub rows: usize,
    pub classes: usize,
    /// Row-major, `rows * classes` values, all finite.
    pub values: Vec<f32>,
    /// The rows of train.csv (or test.csv) the file's index column names,
    /// when it has one that is not simply `0, 1, 2, ...`.
    pub row_ids: Option<Vec<u64>>,
}

/// The name of class column `c` in the CSV layout.
pub fn class_column(c: usize) -> String {
    format!("class_{c}")
}

/// Reads `.npy` (recognised by its magic bytes) or CSV. `classes` is the
/// dataset's class count; `name` is only used in messages.
pub fn read(name: &str, bytes: &[u8], classes: usize) -> Result<Predictions, String> {
    let p = if bytes.starts_with(b"\x93NUMPY") {
        read_npy(bytes, classes)
    } else {
        read_csv(bytes, classes)
    }
    .map_err(|e| format!("{name}: {e}"))?;
    if let Some(i) = p.values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{name}: row {}, column {}: {} (every value must be finite)",
            i / classes,
            class_column(i % classes),
            p.values[i]
        ));
    }
    Ok(p)
}

fn read_npy(bytes: &[u8], classes: usize) -> Result<Predictions, String> {
    let a = parse(bytes).map_err(|e| format!("not a valid .npy file: {e}"))?;
    if !matches!(a.dtype, Dtype::F32 | Dtype::F64) {
        return Err(format!(
            "dtype {}: expected float32 or float64",
            a.dtype.descr()
        ));
    }
    if a.shape.len() != 2 || a.shape[1] != classes {
        return Err(format!(
            "shape {:?}: expected [rows, {classes}] (one column per class of the dataset)",
            a.shape
        ));
    }
    Ok(Predictions {
        rows: a.shape[0],
        classes,
        values: a.to_f32().expect("a float array"),
        row_ids: None,
    })
}

fn read_csv(bytes: &[u8], classes: usize) -> Result<Predictions, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| format!("not a CSV file with a header: {e}"))?
        .clone();
    let mut column_of_class = vec![None; classes];
    let mut index_column = None;
    for (i, h) in header.iter().enumerate() {
        let h = h.trim();
        match h.strip_prefix("class_").map(str::parse::<usize>) {
            Some(Ok(c)) if c < classes => {
                if column_of_class[c].replace(i).is_some() {
                    return Err(format!("column {h} appears twice"));
                }
            }
            Some(Ok(_)) => {
                return Err(format!(
                    "column {h}: the dataset has {classes} classes (class_0 .. class_{})",
                    classes - 1
                ));
            }
            _ if i == 0 => index_column = Some(0),
            _ => {
                return Err(format!(
                    "unexpected column `{h}`: expected an optional index column, then class_0 .. class_{}",
                    classes - 1
                ));
            }
        }
    }
    if let Some(c) = column_of_class.iter().position(Option::is_none) {
        return Err(format!(
            "no column {} (the dataset has {classes} classes: class_0 .. class_{})",
            class_column(c),
            classes - 1
        ));
    }
    let columns: Vec<usize> = column_of_class.into_iter().map(Option::unwrap).collect();
    let mut values = Vec::new();
    let mut ids = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("row {row}: {e}"))?;
        if let Some(i) = index_column {
            let v = record.get(i).unwrap_or("").trim();
            let id = v.parse::<u64>().map_err(|_| {
                format!("row {row}: index `{v}` is not a row number of the dataset")
            })?;
            ids.push(id);
        }
        for (c, &i) in columns.iter().enumerate() {
            let v = record.get(i).unwrap_or("").trim();
            let x = v.parse::<f64>().map_err(|_| {
                format!(
                    "row {row}, column {}: `{v}` is not a number",
                    class_column(c)
                )
            })?;
            values.push(x as f32);
        }
    }
    let rows = values.len() / classes.max(1);
    let positional = ids.iter().enumerate().all(|(i, &id)| id == i as u64);
    Ok(Predictions {
        rows,
        classes,
        values,
        row_ids: (index_column.is_some() && !positional).then_some(ids),
    })
}

/// True when every row is a probability distribution (values in [0, 1]
/// summing to 1 within 1e-3): such a file holds probabilities, anything
/// else is taken as logits.
pub fn are_probabilities(values: &[f32], classes: usize) -> bool {
    values.chunks_exact(classes).all(|row| {
        row.iter().all(|&p| (0.0..=1.0).contains(&p))
            && (row.iter().map(|&p| f64::from(p)).sum::<f64>() - 1.0).abs() <= 1e-3
    })
}

/// The baseline's CSV layout: an index column (`row_ids`, or 0, 1, ...),
/// then `class_0` .. `class_{C-1}`.
pub fn write_csv(values: &[f32], classes: usize, row_ids: Option<&[u64]>) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(values.len() * 12);
    out.push_str("row");
    for c in 0..classes {
        let _ = write!(out, ",{}", class_column(c));
    }
    out.push('\n');
    for (i, row) in values.chunks_exact(classes).enumerate() {
        let id = row_ids.map_or(i as u64, |ids| ids[i]);
        let _ = write!(out, "{id}");
        for v in row {
            let _ = write!(out, ",{v}");
        }
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::NpyArray;

    #[test]
    fn npy_float64_and_float32_are_read() {
        let f32s = NpyArray::from_f32(vec![2, 3], &[0.1, 0.2, 0.7, 1.0, 0.0, 0.0]);
        let p = read("a.npy", &f32s.to_bytes(), 3).unwrap();
        assert_eq!((p.rows, p.classes, p.row_ids.clone()), (2, 3, None));
        assert!(are_probabilities(&p.values, 3));
        let e = read("a.npy", &f32s.to_bytes(), 4).unwrap_err();
        assert!(e.contains("a.npy: shape [2, 3]: expected [rows, 4]"), "{e}");
        let ints = NpyArray::from_i64(vec![1, 3], &[1, 2, 3]);
        let e = read("i.npy", &ints.to_bytes(), 3).unwrap_err();
        assert!(e.contains("dtype <i8: expected float32 or float64"), "{e}");
    }

    #[test]
    fn csv_with_and_without_an_index_column() {
        let plain = "class_0,class_1\n0.5,0.5\n1,0\n";
        let p = read("p.csv", plain.as_bytes(), 2).unwrap();
        assert_eq!((p.rows, p.row_ids.clone()), (2, None));
        // A pandas index 0..n is positional, not row ids.
        let pandas = ",class_1,class_0\n0,0.25,0.75\n1,0,1\n";
        let p = read("p.csv", pandas.as_bytes(), 2).unwrap();
        assert_eq!(p.values, vec![0.75, 0.25, 1.0, 0.0]);
        assert_eq!(p.row_ids, None);
        let fold = "row,class_0,class_1\n7,1,0\n3,0,1\n";
        assert_eq!(
            read("f.csv", fold.as_bytes(), 2).unwrap().row_ids,
            Some(vec![7, 3])
        );
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let e = read("m.csv", b"class_0,class_2\n1,0\n", 3).unwrap_err();
        assert_eq!(
            e,
            "m.csv: no column class_1 (the dataset has 3 classes: class_0 .. class_2)"
        );
        let e = read("n.csv", b"class_0,class_1\n1,NaN\n", 2).unwrap_err();
        assert_eq!(
            e,
            "n.csv: row 0, column class_1: NaN (every value must be finite)"
        );
        let e = read("x.csv", b"class_0,class_1\n1,abc\n", 2).unwrap_err();
        assert!(
            e.contains("row 0, column class_1: `abc` is not a number"),
            "{e}"
        );
        let e = read("x.csv", b"id,image_path,class_0\n", 1).unwrap_err();
        assert!(e.contains("unexpected column `image_path`"), "{e}");
    }

    #[test]
    fn written_csv_reads_back() {
        let values = [0.25f32, 0.75, 1.0, 0.0];
        let bytes = write_csv(&values, 2, Some(&[4, 9]));
        let p = read("w.csv", &bytes, 2).unwrap();
        assert_eq!(p.values, values);
        assert_eq!(p.row_ids, Some(vec![4, 9]));
    }
}
