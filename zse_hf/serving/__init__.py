"""Serving: what the demo and any other front end share without Gradio's layout: safe reading of
web uploads (`uploads`), the demo launcher (`launcher`) and the Hugging Face Space builder
(`space`).

May import: the model, `loading`, `assets`, `cli_args`, `model_summary`, data, retrieval, explain
and conversion (the untrained fallback backbone). Never imports training.
"""
