"""DuckDB storage: schema, the recorder that drains the metric stream, and read queries."""
