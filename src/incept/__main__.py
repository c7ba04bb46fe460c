from incept.cli import main

main()
