"""Reports: run directories -> pandas tables (Table 1 / Table 3 shapes) and matplotlib plots."""
