//! `selected_tags.csv`: `tag_id,name,category,count`, one row per model output in output order.
//! Categories: 9 rating (the first four rows: general, sensitive, questionable, explicit),
//! 0 general, 4 character.

use std::path::Path;

use super::Wd14Error;

/// What a tag row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// `9`: general / sensitive / questionable / explicit.
    Rating,
    /// `0`.
    General,
    /// `4`.
    Character,
    /// Any other category number (kept so the indices stay aligned; kohya never emits them).
    Other(u32),
}

/// One row of the CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// `name`, as written (underscores and all).
    pub name: String,
    /// `category`.
    pub category: Category,
}

/// The rows of `selected_tags.csv`, index = model output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tags {
    /// One per output class.
    pub rows: Vec<Tag>,
}

impl Tags {
    /// Reads `path`; a wrong header or a malformed row is an error naming the file and line.
    pub fn load(path: &Path) -> Result<Self, Wd14Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Wd14Error::File { path: path.to_path_buf(), message: e.to_string() })?;
        Self::parse(&text).map_err(|message| Wd14Error::File { path: path.to_path_buf(), message })
    }

    /// Parses the CSV text (the names have no quotes or commas in the WD files; quoted fields
    /// are still read as CSV).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or("empty file: expected the header tag_id,name,category,count")?;
        let header = split_csv(header.trim_start_matches('\u{feff}'));
        if header.len() < 3 || header[0] != "tag_id" || header[1] != "name" || header[2] != "category" {
            return Err(format!("unexpected header {header:?}: expected tag_id,name,category,count"));
        }
        let rows = lines
            .map(|(i, line)| {
                let fields = split_csv(line);
                let (Some(name), Some(category)) = (fields.get(1), fields.get(2)) else {
                    return Err(format!("line {}: expected tag_id,name,category,count, got {line:?}", i + 1));
                };
                let category = match category.trim().parse::<u32>() {
                    Ok(9) => Category::Rating,
                    Ok(0) => Category::General,
                    Ok(4) => Category::Character,
                    Ok(n) => Category::Other(n),
                    Err(_) => return Err(format!("line {}: category {category:?} is not a number", i + 1)),
                };
                Ok(Tag { name: name.clone(), category })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Tags { rows })
    }

    /// Number of rows (= model classes).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Splits one CSV line (RFC 4180 quoting).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}
