//! Tag captions: parsing, statistics and bulk editing (TagGUI-style).
