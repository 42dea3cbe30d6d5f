"""Explanations of a model's answers, shared by the model server (per prediction), the validation gate
(global importance) and the Gallery.

`layout`: how a row is laid out (shape, picture or table, feature names, feature groups); numpy only.
`profile`: the `explainer` artifact of a version (background summary, training sample, layout).
`attributions`: Kernel SHAP and LIME over any predict function; needs the `explain` extra (shap, lime).
`answer`: the model server's explain answer (pydantic), as the CLI and the Gallery read it.
"""
