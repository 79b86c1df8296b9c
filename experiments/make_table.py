from experiments.tables import cli_make

if __name__ == "__main__":
    cli_make()
