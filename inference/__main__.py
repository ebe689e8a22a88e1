import sys

from inference.main import main

sys.exit(main())
