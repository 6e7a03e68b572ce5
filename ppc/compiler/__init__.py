"""The compiler: compute orders + stage graph -> per-rank instruction lists."""
