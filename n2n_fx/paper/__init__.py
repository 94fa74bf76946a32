"""The paper's experiments (Chen, Goodfellow, Shlens 2016, section 4) at small scale on
scikit-learn's digits: Net2WiderNet and Net2DeeperNet students against random init and random pad.

    n2n-fx experiment all          # the whole study, CSVs, plots and a summary table
"""
