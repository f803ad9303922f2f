"""Reporting: computing evaluation results (`evaluation.compute`), the bias verdict (`bias`),
tables, figures and the HTML report, all written from a results dict."""
