import { LabIcon } from '@jupyterlab/ui-components';

import hivemindSvg from '../style/icons/hivemind.svg';

/** The panel's icon: a honeycomb cell; `jp-icon3` lets the theme colour it. */
export const hivemindIcon = new LabIcon({ name: 'hivemind-jupyter:hivemind', svgstr: hivemindSvg });
