"""EHR example: the SUPPORT2 cohort (SurvSet ``support2``), an MLP factory and its audit config."""
