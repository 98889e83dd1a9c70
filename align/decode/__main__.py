from align.decode.cli import main

main()
