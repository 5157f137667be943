"""KFP component for the register step; the logic is ``searchtune.steps.register.register_model``."""
