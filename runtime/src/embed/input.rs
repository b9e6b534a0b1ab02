//! Input of the batch embedding job: JSONL, CSV or Parquet rows with an id and a text field,
//! and for multimodal models an image field: one path, or several (a JSON array of strings, or
//! one string with the paths separated by `|`) for a clip's frames.
//!
//! A record that cannot be used (missing field, non-UTF-8 bytes, empty text) is a
//! [`Row::Bad`] carrying its line (row number for Parquet) and the reason; only I/O failures and
//! unreadable files are errors.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::{Result, RuntimeError};

/// Input file formats, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
}

impl Format {
    pub fn of(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "parquet" | "pq" => Ok(Format::Parquet),
            _ => Err(RuntimeError::Usage(format!(
                "{}: unknown input format (expected .jsonl, .csv or .parquet)",
                path.display()
            ))),
        }
    }
}

/// One input record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Row {
    Ok {
        line: u64,
        id: String,
        text: String,
        /// Image paths as the file gives them (empty without an image field).
        images: Vec<String>,
    },
    Bad {
        line: u64,
        id: Option<String>,
        reason: String,
    },
}

impl Row {
    pub fn line(&self) -> u64 {
        match self {
            Row::Ok { line, .. } | Row::Bad { line, .. } => *line,
        }
    }
}

/// Which fields hold the id, the text and the image paths.
#[derive(Clone, Debug)]
pub struct Fields {
    /// `None`: rows are identified by their line (row) number.
    pub id: Option<String>,
    pub text: String,
    /// The field of image paths (multimodal models); `None` for text-only input.
    pub images: Option<String>,
    /// Whether a row needs a text (video and live clips are embedded from frames alone).
    pub text_required: bool,
}

impl Fields {
    /// An id and a text field, no images.
    pub fn text(id: Option<String>, text: String) -> Self {
        Self {
            id,
            text,
            images: None,
            text_required: true,
        }
    }
}

/// The image paths of one cell: `|`-separated, blanks dropped.
fn split_paths(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Usage(format!("{}: {e}", path.display()))
}

/// Checks a text, image paths and an id into a row.
fn make_row(
    line: u64,
    id: Option<String>,
    text: Option<String>,
    images: std::result::Result<Vec<String>, String>,
    fields: &Fields,
) -> Row {
    let Some(id_field) = &fields.id else {
        return make_row(
            line,
            Some(line.to_string()),
            text,
            images,
            &Fields {
                id: Some(String::new()),
                ..fields.clone()
            },
        );
    };
    let Some(id) = id else {
        return Row::Bad {
            line,
            id: None,
            reason: format!("missing field {id_field:?}"),
        };
    };
    if id.is_empty() {
        return Row::Bad {
            line,
            id: Some(id),
            reason: format!("field {id_field:?} is empty"),
        };
    }
    let images = match (images, &fields.images) {
        (Err(reason), _) => {
            return Row::Bad {
                line,
                id: Some(id),
                reason,
            };
        }
        (Ok(v), Some(f)) if v.is_empty() => {
            return Row::Bad {
                line,
                id: Some(id),
                reason: format!("no image path in field {f:?}"),
            };
        }
        (Ok(v), _) => v,
    };
    match text {
        None if fields.text_required => Row::Bad {
            line,
            id: Some(id),
            reason: format!("missing field {:?}", fields.text),
        },
        Some(t) if t.trim().is_empty() && fields.text_required => Row::Bad {
            line,
            id: Some(id),
            reason: format!("field {:?} is empty", fields.text),
        },
        text => Row::Ok {
            line,
            id,
            text: text.unwrap_or_default(),
            images,
        },
    }
}

/// A JSON value as an id: strings as they are, numbers in their JSON form.
fn json_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn jsonl_row(line: u64, bytes: &[u8], fields: &Fields) -> Row {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Row::Bad {
            line,
            id: None,
            reason: "not valid UTF-8".into(),
        };
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Row::Bad {
                line,
                id: None,
                reason: format!("not a JSON object: {e}"),
            };
        }
    };
    let Some(obj) = value.as_object() else {
        return Row::Bad {
            line,
            id: None,
            reason: "not a JSON object".into(),
        };
    };
    let id = fields
        .id
        .as_ref()
        .and_then(|f| obj.get(f))
        .and_then(json_id);
    let text = match obj.get(&fields.text) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Row::Bad {
                line,
                id,
                reason: format!("field {:?} is not a string: {other}", fields.text),
            };
        }
    };
    let images = match &fields.images {
        None => Ok(Vec::new()),
        Some(f) => match obj.get(f) {
            None | Some(serde_json::Value::Null) => Err(format!("missing field {f:?}")),
            Some(serde_json::Value::String(s)) => Ok(split_paths(s)),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("field {f:?} holds something other than path strings")),
            Some(other) => Err(format!(
                "field {f:?} is not a path or an array of paths: {other}"
            )),
        },
    };
    make_row(line, id, text, images, fields)
}

/// Reads the rows of a file in order.
pub struct Reader {
    inner: Inner,
    fields: Fields,
}

enum Inner {
    Jsonl {
        lines: BufReader<File>,
        line: u64,
        buf: Vec<u8>,
    },
    Csv {
        reader: csv::Reader<File>,
        id_col: Option<usize>,
        text_col: Option<usize>,
        image_col: Option<usize>,
        record: csv::ByteRecord,
    },
    Parquet {
        batches: ParquetRecordBatchReader,
        current: Option<RecordBatch>,
        offset: usize,
        row: u64,
    },
}

impl Reader {
    pub fn open(path: &Path, fields: Fields) -> Result<Self> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        let inner = match Format::of(path)? {
            Format::Jsonl => Inner::Jsonl {
                lines: BufReader::with_capacity(1 << 20, file),
                line: 0,
                buf: Vec::new(),
            },
            Format::Csv => {
                let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
                let headers = reader.byte_headers().map_err(|e| io_err(path, e))?.clone();
                let col = |name: &str| headers.iter().position(|h| h == name.as_bytes());
                let id_col = fields.id.as_deref().and_then(col);
                let text_col = col(&fields.text);
                if text_col.is_none() && fields.text_required {
                    return Err(io_err(
                        path,
                        format!("the CSV header has no column {:?}", fields.text),
                    ));
                }
                let image_col = match &fields.images {
                    None => None,
                    Some(f) => Some(col(f).ok_or_else(|| {
                        io_err(path, format!("the CSV header has no column {f:?}"))
                    })?),
                };
                Inner::Csv {
                    reader,
                    id_col,
                    text_col,
                    image_col,
                    record: csv::ByteRecord::new(),
                }
            }
            Format::Parquet => {
                let builder =
                    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| io_err(path, e))?;
                let schema = builder.schema().clone();
                let names = std::iter::once(&fields.text)
                    .filter(|_| fields.text_required)
                    .chain(&fields.images);
                for name in names {
                    let field = schema
                        .field_with_name(name)
                        .map_err(|_| io_err(path, format!("no column {name:?}")))?;
                    if !matches!(
                        field.data_type(),
                        DataType::Utf8
                            | DataType::LargeUtf8
                            | DataType::Utf8View
                            | DataType::Binary
                            | DataType::LargeBinary
                    ) {
                        return Err(io_err(
                            path,
                            format!("column {name:?} is {}, not text", field.data_type()),
                        ));
                    }
                }
                let batches = builder
                    .with_batch_size(4096)
                    .build()
                    .map_err(|e| io_err(path, e))?;
                Inner::Parquet {
                    batches,
                    current: None,
                    offset: 0,
                    row: 0,
                }
            }
        };
        Ok(Self { inner, fields })
    }

    /// The next row; `Ok(None)` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<Row>> {
        match &mut self.inner {
            Inner::Jsonl { lines, line, buf } => loop {
                buf.clear();
                let n = lines
                    .read_until(b'\n', buf)
                    .map_err(|e| RuntimeError::Usage(format!("reading input: {e}")))?;
                if n == 0 {
                    return Ok(None);
                }
                *line += 1;
                let trimmed = buf.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                return Ok(Some(jsonl_row(*line, trimmed, &self.fields)));
            },
            Inner::Csv {
                reader,
                id_col,
                text_col,
                image_col,
                record,
            } => {
                let more = match reader.read_byte_record(record) {
                    Ok(more) => more,
                    Err(e) => {
                        // A malformed record (bad quoting) is the record's fault, not fatal.
                        let line = e.position().map(|p| p.line()).unwrap_or(0);
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            return Err(RuntimeError::Usage(format!("reading input: {e}")));
                        }
                        return Ok(Some(Row::Bad {
                            line,
                            id: None,
                            reason: format!("malformed CSV record: {e}"),
                        }));
                    }
                };
                if !more {
                    return Ok(None);
                }
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                let field = |col: &Option<usize>| -> std::result::Result<Option<String>, ()> {
                    match col.and_then(|c| record.get(c)) {
                        None => Ok(None),
                        Some(b) => std::str::from_utf8(b)
                            .map(|s| Some(s.to_string()))
                            .map_err(|_| ()),
                    }
                };
                let id = field(id_col);
                let text = field(text_col);
                let images = match field(image_col) {
                    Ok(cell) => Ok(cell.as_deref().map(split_paths).unwrap_or_default()),
                    Err(()) => Err("image paths are not valid UTF-8".to_string()),
                };
                Ok(Some(match (id, text) {
                    (Ok(id), Ok(text)) => make_row(line, id, text, images, &self.fields),
                    (id, _) => Row::Bad {
                        line,
                        id: id.ok().flatten(),
                        reason: "not valid UTF-8".into(),
                    },
                }))
            }
            Inner::Parquet {
                batches,
                current,
                offset,
                row,
            } => loop {
                if let Some(batch) = current.as_ref()
                    && *offset < batch.num_rows()
                {
                    let i = *offset;
                    *offset += 1;
                    *row += 1;
                    return Ok(Some(parquet_row(batch, i, *row, &self.fields)));
                }
                match batches.next() {
                    None => return Ok(None),
                    Some(Ok(b)) => {
                        *current = Some(b);
                        *offset = 0;
                    }
                    Some(Err(e)) => {
                        return Err(RuntimeError::Usage(format!("reading Parquet input: {e}")));
                    }
                }
            },
        }
    }
}

/// Cell `i` of a column as a string; `Err` for bytes that are not UTF-8.
fn cell(col: &dyn Array, i: usize) -> std::result::Result<Option<String>, ()> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if col.is_null(i) {
        return Ok(None);
    }
    let bytes = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(|s| Some(s.to_string()))
            .map_err(|_| ())
    };
    Ok(match col.data_type() {
        DataType::Utf8 => Some(col.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(col.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(col.as_string_view().value(i).to_string()),
        DataType::Binary => return bytes(col.as_binary::<i32>().value(i)),
        DataType::LargeBinary => return bytes(col.as_binary::<i64>().value(i)),
        DataType::Int64 => Some(col.as_primitive::<Int64Type>().value(i).to_string()),
        DataType::Int32 => Some(col.as_primitive::<Int32Type>().value(i).to_string()),
        DataType::UInt64 => Some(col.as_primitive::<UInt64Type>().value(i).to_string()),
        DataType::UInt32 => Some(col.as_primitive::<UInt32Type>().value(i).to_string()),
        _ => None,
    })
}

fn parquet_row(batch: &RecordBatch, i: usize, row: u64, fields: &Fields) -> Row {
    let get = |name: &str| match batch.column_by_name(name) {
        None => Ok(None),
        Some(col) => cell(col.as_ref(), i),
    };
    let id = match &fields.id {
        Some(f) => get(f),
        None => Ok(None),
    };
    let images = match &fields.images {
        None => Ok(Vec::new()),
        Some(f) => match get(f) {
            Ok(cell) => Ok(cell.as_deref().map(split_paths).unwrap_or_default()),
            Err(()) => Err("image paths are not valid UTF-8".to_string()),
        },
    };
    match (id, get(&fields.text)) {
        (Ok(id), Ok(text)) => make_row(row, id, text, images, fields),
        (id, _) => Row::Bad {
            line: row,
            id: id.ok().flatten(),
            reason: "not valid UTF-8".into(),
        },
    }
}

/// Number of records in a file, for the progress bar (JSONL: non-blank lines; CSV: records;
/// Parquet: from the footer).
pub fn count_rows(path: &Path) -> Result<u64> {
    match Format::of(path)? {
        Format::Parquet => {
            let file = File::open(path).map_err(|e| io_err(path, e))?;
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| io_err(path, e))?;
            Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
        }
        Format::Jsonl => {
            let mut reader =
                BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| io_err(path, e))?);
            let mut n = 0u64;
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if reader
                    .read_until(b'\n', &mut buf)
                    .map_err(|e| io_err(path, e))?
                    == 0
                {
                    return Ok(n);
                }
                n += u64::from(!buf.trim_ascii().is_empty());
            }
        }
        Format::Csv => {
            let file = File::open(path).map_err(|e| io_err(path, e))?;
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(file);
            let mut record = csv::ByteRecord::new();
            let mut n = 0u64;
            loop {
                match reader.read_byte_record(&mut record) {
                    Ok(true) => n += 1,
                    Ok(false) => return Ok(n),
                    Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                        return Err(io_err(path, e));
                    }
                    Err(_) => n += 1,
                }
            }
        }
    }
}
