//! XY grids of generated images (rows = LoRA files such as the epochs of one run, columns =
//! prompts), labelled with a built-in 8×8 bitmap font so the binary needs no font files.

use font8x8::UnicodeFonts;

use crate::pipeline::RgbImage;
use crate::{Error, Result};

const BACKGROUND: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [20, 20, 20];
/// Space between cells and around labels, in pixels.
const GAP: usize = 8;
/// At most this many label lines (longer prompts end in "…").
const MAX_LINES: usize = 4;

/// Lays out `cells[row][column]` (all the same size) with `row_labels` on the left and
/// `column_labels` on top.
pub fn compose_grid(cells: &[Vec<RgbImage>], row_labels: &[String], column_labels: &[String]) -> Result<RgbImage> {
    let rows = cells.len();
    let cols = cells.first().map_or(0, Vec::len);
    if rows == 0 || cols == 0 || cells.iter().any(|r| r.len() != cols) {
        return Err(Error::Invalid("a grid needs at least one image in every row and column".into()));
    }
    if row_labels.len() != rows || column_labels.len() != cols {
        return Err(Error::Invalid(format!(
            "grid of {rows}×{cols} images got {} row and {} column labels",
            row_labels.len(),
            column_labels.len()
        )));
    }
    let (cw, ch) = (cells[0][0].width, cells[0][0].height);
    if cells.iter().flatten().any(|c| c.width != cw || c.height != ch) {
        return Err(Error::Invalid("grid images differ in size".into()));
    }
    // Scale the font with the cell size: 16 px glyphs for 512 px images, 8 px for small ones.
    let scale = if cw >= 384 { 2 } else { 1 };
    let glyph = 8 * scale;
    let col_chars = (cw / glyph).max(4);
    let col_lines: Vec<Vec<String>> = column_labels.iter().map(|l| wrap(l, col_chars)).collect();
    let top = GAP + col_lines.iter().map(Vec::len).max().unwrap_or(0) * (glyph + 2) + GAP;
    let row_chars = 24;
    let row_lines: Vec<Vec<String>> = row_labels.iter().map(|l| wrap(l, row_chars)).collect();
    let longest_row_line = row_lines.iter().flatten().map(|l| l.chars().count()).max().unwrap_or(0);
    let left = if longest_row_line == 0 { GAP } else { GAP + longest_row_line * glyph + GAP };

    let width = left + cols * (cw + GAP);
    let height = top + rows * (ch + GAP);
    let mut canvas = RgbImage { width, height, pixels: BACKGROUND.repeat(width * height) };
    for (c, lines) in col_lines.iter().enumerate() {
        for (i, line) in lines.iter().enumerate() {
            draw_text(&mut canvas, line, left + c * (cw + GAP), GAP + i * (glyph + 2), scale);
        }
    }
    for (r, row) in cells.iter().enumerate() {
        let y0 = top + r * (ch + GAP);
        for (i, line) in row_lines[r].iter().enumerate() {
            draw_text(&mut canvas, line, GAP, y0 + i * (glyph + 2), scale);
        }
        for (c, cell) in row.iter().enumerate() {
            blit(&mut canvas, cell, left + c * (cw + GAP), y0);
        }
    }
    Ok(canvas)
}

/// Word-wraps `text` to lines of at most `width` characters, at most [`MAX_LINES`] lines.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let mut word: String = word.to_string();
        while word.chars().count() > width {
            if !current.is_empty() {
                lines.push(std::mem::take(&mut current));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        let needed =
            if current.is_empty() { word.chars().count() } else { current.chars().count() + 1 + word.chars().count() };
        if needed > width && !current.is_empty() {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    if lines.len() > MAX_LINES {
        lines.truncate(MAX_LINES);
        let last = &mut lines[MAX_LINES - 1];
        let kept: String = last.chars().take(width.saturating_sub(1)).collect();
        *last = format!("{kept}…");
    }
    lines
}

fn blit(canvas: &mut RgbImage, image: &RgbImage, x0: usize, y0: usize) {
    for y in 0..image.height {
        let src = &image.pixels[y * image.width * 3..(y + 1) * image.width * 3];
        let start = ((y0 + y) * canvas.width + x0) * 3;
        canvas.pixels[start..start + src.len()].copy_from_slice(src);
    }
}

/// Draws `text` with its top-left corner at (x, y); glyphs outside the 8×8 basic/Latin-1 sets
/// are drawn as `?`, and text running off the canvas is clipped.
fn draw_text(canvas: &mut RgbImage, text: &str, x: usize, y: usize, scale: usize) {
    for (i, ch) in text.chars().enumerate() {
        let bitmap = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| if ch == '…' { font8x8::BASIC_FONTS.get('~') } else { None })
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + i * 8 * scale;
        for (row, bits) in bitmap.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (gx + col * scale + dx, y + row * scale + dy);
                        if px < canvas.width && py < canvas.height {
                            let at = (py * canvas.width + px) * 3;
                            canvas.pixels[at..at + 3].copy_from_slice(&INK);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: usize, h: usize, v: u8) -> RgbImage {
        RgbImage { width: w, height: h, pixels: vec![v; w * h * 3] }
    }

    #[test]
    fn grid_places_cells_and_labels() {
        let cells = vec![vec![solid(16, 16, 10), solid(16, 16, 20)], vec![solid(16, 16, 30), solid(16, 16, 40)]];
        let g = compose_grid(&cells, &["e1".into(), "e2".into()], &["cat".into(), "dog".into()]).unwrap();
        let left = GAP + 2 * 8 + GAP;
        let top = GAP + 10 + GAP;
        assert_eq!((g.width, g.height), (left + 2 * 24, top + 2 * 24));
        let px = |x: usize, y: usize| g.pixels[(y * g.width + x) * 3];
        assert_eq!(px(left + 1, top + 1), 10);
        assert_eq!(px(left + 24 + 1, top + 1), 20);
        assert_eq!(px(left + 1, top + 24 + 1), 30);
        assert_eq!(px(left + 24 + 15, top + 24 + 15), 40);
        // Some ink in the label areas.
        assert!((0..top).any(|y| (left..g.width).any(|x| px(x, y) == INK[0])));
        assert!((top..g.height).any(|y| (0..left).any(|x| px(x, y) == INK[0])));
    }

    #[test]
    fn grid_rejects_ragged_input() {
        let cells = vec![vec![solid(8, 8, 0)], vec![]];
        assert!(compose_grid(&cells, &["a".into(), "b".into()], &["c".into()]).is_err());
        let cells = vec![vec![solid(8, 8, 0), solid(16, 8, 0)]];
        assert!(compose_grid(&cells, &["a".into()], &["c".into(), "d".into()]).is_err());
    }

    #[test]
    fn wrap_breaks_words_and_caps_lines() {
        assert_eq!(wrap("a photo of a cat", 8), vec!["a photo", "of a cat"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        let long = wrap(&"word ".repeat(50), 10);
        assert_eq!(long.len(), MAX_LINES);
        assert!(long[MAX_LINES - 1].ends_with('…'));
    }
}
