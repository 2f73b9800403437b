"""render: results as tables, plots and HTML pages (summary tables, sensitivity columns, comparisons)."""
