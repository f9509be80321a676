#include "CLibPNG.h"
