// The campaign overview: closing the campaign and removing a labeller ask first.
import { confirmForms } from "./common.js";

confirmForms();
