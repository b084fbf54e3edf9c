//! Integration tests: one binary (style habit 13).
