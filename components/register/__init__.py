"""KFP component for the register step; the logic is ``searchtune.register.register_model``."""
