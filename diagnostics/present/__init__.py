"""Reports for readers: the HTML page, plots, the CI summary and the changelog."""
