//! The shapes world of lorakit's quick start, and a measure of what an image shows.
//!
//! `tools/world/world.py` draws the world: one flat-coloured shape on a plain background, the
//! shape's outline scaled to fill its bounding box. A base model is pretrained on circles,
//! squares, triangles and diamonds; stars and hearts are concepts a LoRA teaches. This crate
//! holds the same geometry and [`read_image`], which says which shape and colour an image
//! shows by fitting every outline to the box of what it finds. It knows nothing of any model,
//! so it can judge lorakit's and sd-scripts' LoRAs alike.

mod geometry;
mod measure;
pub mod probe;

pub use geometry::{render, unit_polygon, Scene, IMAGE_SIZE};
pub use measure::{read_image, read_pixels, Reading};

/// A shape of the world.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Base world.
    Circle,
    /// Base world.
    Square,
    /// Base world, apex up.
    Triangle,
    /// Base world.
    Diamond,
    /// Concept: five points, one up.
    Star,
    /// Concept: point down.
    Heart,
}

impl Shape {
    /// Every shape, base world first.
    pub const ALL: [Shape; 6] =
        [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Diamond, Shape::Star, Shape::Heart];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Diamond => "diamond",
            Shape::Star => "star",
            Shape::Heart => "heart",
        }
    }

    /// The shape a caption word names.
    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A named colour and its RGB value, as `world.py` paints it.
pub type NamedColour = (&'static str, [u8; 3]);

/// Shape colours.
pub const COLOURS: [NamedColour; 6] = [
    ("red", [220, 40, 40]),
    ("green", [40, 170, 60]),
    ("blue", [40, 80, 220]),
    ("yellow", [240, 210, 40]),
    ("purple", [140, 60, 180]),
    ("orange", [240, 130, 30]),
];

/// Background colours.
pub const BACKGROUNDS: [NamedColour; 3] =
    [("white", [245, 245, 245]), ("black", [20, 20, 20]), ("gray", [128, 128, 128])];

/// The value of a named colour in `palette`.
pub fn colour_value(palette: &[NamedColour], name: &str) -> Option<[u8; 3]> {
    palette.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
