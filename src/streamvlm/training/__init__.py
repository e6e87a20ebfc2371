"""Training the evaluation model (`streamvlm train eval`); not needed to run streamvlm."""
