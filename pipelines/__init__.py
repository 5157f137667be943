"""The compiled KFP DAG(s) of searchtune."""
