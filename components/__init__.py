"""KFP components, one folder per pipeline step; the step logic lives in ``searchtune``."""
