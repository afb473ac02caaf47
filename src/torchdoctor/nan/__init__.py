"""nan-hunt: run the user's own training and name the first producer of NaN/inf."""
