"""placeholder"""
def main(argv=None):
    pass
