from vitkit.cli import main

main()
