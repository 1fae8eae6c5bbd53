//! kohya's tag selection (filled in next).
