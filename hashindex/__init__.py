"""Binary hashing of codebooks and exact/approximate volume-wise search over code grids."""
